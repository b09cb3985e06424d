"""The README is a front page and every relative link in it and in docs/ leads somewhere."""

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_CHARS = 12_500

FENCED_CODE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+).+?\1", re.DOTALL)
INLINE_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_TARGET = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_TARGET = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(markdown: str) -> str:
    """The text outside code, where `](...)` is a link and `# x` a heading."""
    return INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))


def link_targets(markdown: str) -> list[str]:
    """Targets of the markdown links, images, reference definitions and HTML src/href."""
    prose = _prose(markdown)
    return [
        m.group(1)
        for pattern in (INLINE_TARGET, REFERENCE_TARGET, HTML_TARGET)
        for m in pattern.finditer(prose)
    ]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    anchors, seen = set(), Counter()
    for m in HEADING.finditer(FENCED_CODE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def broken_links(page: Path) -> list[str]:
    """Each relative target of `page` whose file, or whose #anchor in a .md file, is missing."""
    broken = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if URL_SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif (
            anchor
            and linked.suffix == ".md"
            and anchor not in heading_anchors(linked.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


def test_the_link_checker_finds_a_broken_link_a_good_one_and_skips_code(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A page\n\n## Its `second` part, here\n")
    (tmp_path / "fig.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](there.md) [ok](there.md#its-second-part-here) ![ok](fig.png) [ok](#page)\n"
        "[web](https://example.org/x.md) `[in code](gone.md)`\n"
        "```\n[in a block](gone.md)\n```\n"
        '[missing](missing.md) ![missing](figs/none.png) <img src="no.png">\n'
        "[bad anchor](there.md#nowhere) [bad anchor](#nowhere)\n"
        "[ref]: also_missing.md\n"
    )
    assert [line.split(":")[0] for line in broken_links(page)] == [
        "missing.md",
        "figs/none.png",
        "there.md#nowhere",
        "#nowhere",
        "also_missing.md",
        "no.png",
    ]


def test_the_docs_pages_exist() -> None:
    assert {page.stem for page in DOC_PAGES} >= {
        "modes",
        "running",
        "records",
        "figures",
        "claims",
        "wandb",
        "data",
        "reproducibility",
        "benchmarks",
        "development",
    }


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    assert link_targets(page.read_text(encoding="utf-8")), f"{page.name} links nowhere"
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in link_targets(README.read_text())}
    assert [page.name for page in DOC_PAGES if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_each_docs_page_opens_with_a_summary_and_a_link_back_to_the_readme(page: Path) -> None:
    title, summary, back = [line for line in page.read_text().splitlines() if line.strip()][:3]
    assert title.startswith("# ") and not summary.startswith("#")
    assert "](../README.md)" in back


def test_the_readme_is_a_front_page() -> None:
    assert len(README.read_text(encoding="utf-8")) <= README_MAX_CHARS
