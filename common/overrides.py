"""The `KEY=VALUE` grammar of every command-line setting (`--override`, `--recipe`, `--param`, `--set-256`,
`--model NAME=PRESET:k=v,...`), in one place so that every option reads a value the same way.

A value is JSON when it parses as JSON (`1e-5`, `true`, `[1, 2]`, `"quoted"`), else the plain string (paths and
names need no quotes). `none` / an empty value is None only where a caller asks for it (`none_words`).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["OverrideError", "split_pair", "parse_value", "parse_pairs", "parse_overrides", "parse_step_overrides"]


class OverrideError(ValueError):
    """A setting does not follow the grammar; the message names the option and the offending item."""


def split_pair(item: str, option: str = "--override", form: str = "KEY=VALUE") -> tuple[str, str]:
    """`"a.b=1"` -> `("a.b", "1")`; the key must not be empty."""
    key, sep, raw = str(item).partition("=")
    if not sep or not key:
        raise OverrideError(f"{option} expects {form}, got {item!r}")
    return key, raw


def parse_value(raw: str, *, none_words: bool = False) -> Any:
    """JSON if `raw` is JSON, else `raw` itself; with `none_words`, "none" (any case) and "" are None."""
    if none_words and raw.strip().lower() in ("none", ""):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_pairs(items, option: str = "--override", form: str = "KEY=VALUE", *, typed: bool = True,
                none_words: bool = False) -> dict[str, Any]:
    """Repeated `KEY=VALUE` items -> {key: value} (values parsed when `typed`, else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, raw = split_pair(item, option, form)
        out[key] = parse_value(raw, none_words=none_words) if typed else raw
    return out


def parse_overrides(items, option: str = "--override") -> dict[str, Any]:
    """A trainer's `dotted.key=VALUE` overrides -> {dotted.key: value}."""
    return parse_pairs(items, option, "key=value")


def parse_step_overrides(items, option: str = "--override") -> dict[str, dict[str, Any]]:
    """A pipeline's `STEP.KEY=VALUE` overrides -> {step: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_pairs(items, option, "STEP.KEY=JSON").items():
        step, dot, field = key.partition(".")
        if not dot or not step or not field:
            raise OverrideError(f"{option} expects STEP.KEY=JSON, got {key}=...")
        out.setdefault(step, {})[field] = value
    return out
