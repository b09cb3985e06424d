"""The layering is a checked fact: import-linter's contracts in pyproject.toml hold, and the tool
does catch an import that breaks one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_project_keeps_its_import_contracts():
    result = _lint()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_contract_an_import_breaks_is_reported(tmp_path):
    # normlab.train imports normlab.trainer: a contract forbidding it must come out broken
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["normlab"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "train never imports trainer"\ntype = "forbidden"\n'
        'source_modules = ["normlab.train"]\nforbidden_modules = ["normlab.trainer"]\n'
    )
    result = _lint("--config", str(config))
    assert result.returncode != 0
    assert "normlab.train -> normlab.trainer" in result.stdout


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_code_uses_hydra_only_through_its_public_api():
    private = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for name in _imported_modules(path):
            parts = name.split(".")
            if parts[0] in ("hydra", "hydra_plugins", "omegaconf") and (
                any(p.startswith("_") and p != "__future__" for p in parts) or "singleton" in parts
            ):
                private.append(f"{path.relative_to(REPO)}: {name}")
    assert private == [], private
