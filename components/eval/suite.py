"""Prompt suites in VBench's `VBench_full_info.json` format, and VBench's file-naming convention.

`mini` is shipped beside this file (`mini_suite.json`: 22 VBench prompts, 2 per prompt suite, with their
dimension tags; Apache-2.0, see `VBENCH_LICENSE`). Any other value is a path to a file in the
`VBench_full_info.json` format (a list of `{"prompt_en", "dimension", ["auxiliary_info"]}`), e.g. VBench's standard
946-prompt suite (its own `VBench_full_info.json`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MINI_SUITE = Path(__file__).with_name("mini_suite.json")


@dataclass(frozen=True)
class SuitePrompt:
    prompt: str
    dimensions: tuple[str, ...]
    auxiliary_info: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Suite:
    name: str
    source: str
    prompts: list[SuitePrompt]
    meta: dict = field(default_factory=dict)


def _parse_entries(entries, where: str) -> list[SuitePrompt]:
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{prompt_en, dimension}} entries, got {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("prompt_en"), str) or not e["prompt_en"].strip():
            raise ValueError(f"{where}: entry {i} has no non-empty 'prompt_en' string")
        dims = e.get("dimension", [])
        if isinstance(dims, str):
            dims = [dims]
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise ValueError(f"{where}: entry {i} ('{e['prompt_en'][:40]}'): 'dimension' must be a list of strings")
        out.append(SuitePrompt(e["prompt_en"], tuple(dims), dict(e.get("auxiliary_info") or {})))
    return out


def load_suite(suite: str = "mini", max_prompts: int | None = None) -> Suite:
    """The named suite (`mini`) or a VBench_full_info.json-format file; optionally the first `max_prompts`."""
    if suite == "mini":
        doc = json.loads(MINI_SUITE.read_text(encoding="utf-8"))
        meta = {k: v for k, v in doc.items() if k != "prompts"}
        result = Suite("mini", str(MINI_SUITE), _parse_entries(doc["prompts"], str(MINI_SUITE)), meta)
    else:
        path = Path(suite)
        if not path.is_file():
            raise FileNotFoundError(f"prompt suite {suite!r}: not 'mini' and no such file")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"prompt suite {path}: not valid JSON ({exc})") from exc
        entries = doc["prompts"] if isinstance(doc, dict) and "prompts" in doc else doc
        meta = {k: v for k, v in doc.items() if k != "prompts"} if isinstance(doc, dict) else {}
        result = Suite(path.stem, str(path), _parse_entries(entries, str(path)), meta)
    seen = set()
    # VBench keys videos by prompt text, so duplicates would overwrite each other's files.
    result.prompts = [p for p in result.prompts if not (p.prompt in seen or seen.add(p.prompt))]
    if max_prompts is not None:
        result.prompts = result.prompts[:max_prompts]
    return result


def video_file_name(prompt: str, index: int) -> str:
    """VBench's `{prompt}-{index}.mp4`; '/' (impossible in a file name) becomes a space, as in generate."""
    safe = re.sub(r"[/\\\0]", " ", prompt).strip()[:180] or "empty"
    return f"{safe}-{index}.mp4"


def prompt_from_file_name(name: str) -> str:
    """VBench's `get_prompt_from_filename`: the stem without a trailing `-<digits>`."""
    stem = Path(name).stem
    return re.sub(r"-\d+$", "", stem)
