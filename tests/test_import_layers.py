"""The layering of docs/architecture.md ("The layers and what may import what"), enforced over every module of
the tree: each package imports only the packages below it (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages of ours it may import (itself included)
ALLOWED = {
    "common": {"common"},
    "models": {"models"},
    "monitoring": {"common", "monitoring"},
    "training": {"common", "models", "monitoring", "training"},
    "inference": {"common", "models", "training", "inference"},
    "components": {"common", "models", "monitoring", "training", "inference", "components"},
    "pipelines": {"common", "models", "monitoring", "training", "inference", "components", "pipelines"},
    "cli": {"common", "models", "monitoring", "training", "inference", "components", "pipelines", "cli"},
}
OURS = set(ALLOWED)


def _package_dir(name: str) -> Path:
    for base in (ROOT, ROOT / "src" / "soraflow", ROOT / "soraflow"):  # before and after the namespace move
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"package {name!r} not found under {ROOT}")


def _ours(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "soraflow":
        parts = parts[1:]
    return parts[0] if parts and parts[0] in OURS else None


def imported_packages(path: Path, package: str) -> dict[str, int]:
    """Our top-level packages that `path` imports -> the first line doing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside this package
                names = [package]
            elif node.module:
                names = [node.module]
        for name in names:
            top = package if name == package else _ours(name)
            if top is not None:
                found.setdefault(top, node.lineno)
    return found


def violations() -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        base = _package_dir(package)
        for path in sorted(base.rglob("*.py")):
            for top, line in imported_packages(path, package).items():
                if top not in allowed:
                    out.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {top}")
    return out


def test_no_package_imports_a_layer_above_it():
    assert violations() == []


@pytest.mark.parametrize("source,package,expected", [
    ("from soraflow.training.parallel.mmdit import apply_compile\n", "models", {"training"}),
    ("def f():\n    import pipelines.cli\n", "models", {"pipelines"}),
    ("from soraflow.components.data import x\n", "training", {"components"}),
    ("from . import layers\nimport torch\n", "models", {"models"}),
])
def test_the_scanner_sees_every_import_form(tmp_path, source, package, expected):
    """The checker itself: module-level, in-function, namespaced and relative imports are all seen."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert set(imported_packages(path, package)) == expected
    assert (set(imported_packages(path, package)) <= ALLOWED[package]) == (expected <= ALLOWED[package])
