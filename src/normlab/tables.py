"""Tables as text: a caption and a pipe table (Markdown), a booktabs ``tabular`` (LaTeX), and the
numbers beside them (CSV). Every table of normlab (figures' summaries, claims, papers) is rendered
here. Imports neither torch nor matplotlib."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def to_markdown(shown: pd.DataFrame, left: int, caption: str) -> str:
    """A caption and a pipe table; the first ``left`` columns left-aligned, the rest right."""
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(shown.columns))) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in shown.to_numpy().tolist()]
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def tex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("‖", r"$\|$"),
        ("−", "$-$"),
        ("μ", r"$\mu$"),
        ("σ", r"$\sigma$"),
        ("–", "--"),
        ("≤", r"$\leq$"),
        ("≥", r"$\geq$"),
        ("×", r"$\times$"),
        ("±", r"$\pm$"),
        ("§", r"\S{}"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(shown: pd.DataFrame, left: int, caption: str = "") -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), the caption as a comment."""
    spec = "l" * left + "r" * (len(shown.columns) - left)
    lines = [f"% {caption}"] if caption else []
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(str(c)) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    for row in shown.to_numpy().tolist():
        lines.append(" & ".join(tex_escape(str(c)) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(
    table: pd.DataFrame, shown: pd.DataFrame, stem: Path, caption: str, left: int
) -> list[Path]:
    """``stem``.md and .tex (``shown``, the text) and .csv (``table``, the numbers)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv")]
    paths[0].write_text(to_markdown(shown, left, caption), encoding="utf-8")
    paths[1].write_text(to_latex(shown, left, caption), encoding="utf-8")
    table.to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths
