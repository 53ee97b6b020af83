"""Loaders for the static infrastructure tests (no cloud, no cluster, no Terraform providers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[2]
TF_ROOT = REPO / "infra" / "terraform"
GITOPS = REPO / "infra" / "gitops"
WORKFLOWS = REPO / ".github" / "workflows"
TF_DIRS = [TF_ROOT] + sorted(p for p in (TF_ROOT / "modules").iterdir() if p.is_dir())


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def clean(obj: Any) -> Any:
    """python-hcl2 8.x keeps string quotes and adds __is_block__/__comments__ markers; drop both."""
    if isinstance(obj, dict):
        return {_unquote(k): clean(v) for k, v in obj.items() if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if isinstance(obj, str):
        return _unquote(obj)
    return obj


def parse_tf(path: Path) -> dict:
    import hcl2  # declared in the test extra

    with path.open() as f:
        return clean(hcl2.load(f))


def tf_module(directory: Path) -> dict[str, list]:
    """Merge the top-level blocks of every .tf file of one module."""
    merged: dict[str, list] = {}
    for f in sorted(directory.glob("*.tf")):
        for key, blocks in parse_tf(f).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def resources(module: dict, rtype: str) -> dict[str, dict]:
    return {name: body for block in module.get("resource", []) for name, body in block.get(rtype, {}).items()}


def all_resources(module: dict) -> list[tuple[str, str, dict]]:
    return [(t, n, b) for block in module.get("resource", []) for t, named in block.items() for n, b in named.items()]


def variables(module: dict) -> dict[str, dict]:
    return {name: body for block in module.get("variable", []) for name, body in block.items()}


def outputs(module: dict) -> dict[str, dict]:
    return {name: body for block in module.get("output", []) for name, body in block.items()}


def module_calls(module: dict) -> dict[str, dict]:
    return {name: body for block in module.get("module", []) for name, body in block.items()}


def one(block: Any) -> Any:
    """Nested blocks come as lists of dicts; most occur once."""
    return block[0] if isinstance(block, list) else block
