"""`split_dataset`: the curated sets minus a held-out group of source videos, plus the held-out clips.

Held out are whole source videos (every clip cut from one source goes to the same side), so no held-out clip
shares footage with a training clip. Which sources:

* sources whose file name starts with `heldout_` when there are any (the generated sample set names its
  held-out photographs so; `components/sample_data`), else
* a deterministic `fraction` of the sources by the sha256 of their file name (at least one when there are two
  or more sources), so the split of a given dataset never changes between runs.

Outputs (`out_dir`): `set_256px.parquet` and `set_768px.parquet` (the training rows), `heldout.parquet` (the
held-out rows of the 256px set, the looser curated set), `split.json` (counts and the held-out sources). Paths in
the tables are absolute, since the tables no longer sit beside the clips.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from soraflow.common.atomic import write_text_atomic
from soraflow.common.clip_table import HELDOUT_FILE, SET_FILES, SETS, read_table, write_table

HELDOUT_PREFIX = "heldout_"


@dataclass
class SplitResult:
    out_dir: Path
    counts: dict
    heldout_sources: list[str]


def _source_column(df: pd.DataFrame) -> str:
    return "source" if "source" in df.columns else "path"


def heldout_sources(sources, fraction: float = 0.125) -> list[str]:
    """The held-out subset of `sources` (see the module docstring for the rule)."""
    uniq = sorted(set(map(str, sources)))
    named = [s for s in uniq if os.path.basename(s).startswith(HELDOUT_PREFIX)]
    if named:
        return named
    if len(uniq) < 2:
        return []
    key = {s: int(hashlib.sha256(os.path.basename(s).encode()).hexdigest()[:8], 16) / 16**8 for s in uniq}
    chosen = [s for s in uniq if key[s] < fraction]
    return chosen or [min(uniq, key=key.get)]


def _absolute(df: pd.DataFrame, base: Path) -> pd.DataFrame:
    df = df.copy()
    df["path"] = [p if os.path.isabs(p) else str((base / p).resolve()) for p in df["path"].astype(str)]
    return df


def split_dataset(curated_dir: str, out_dir: str, *, fraction: float = 0.125) -> SplitResult:
    """Split the filter step's dataset folder (`set_256px.parquet`, `set_768px.parquet`) into training and
    held-out tables in `out_dir`."""
    src, out = Path(curated_dir), Path(out_dir)
    tables = {}
    for name in SETS:
        path = src / SET_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the curated dataset has no {name} table")
        tables[name] = _absolute(read_table(path), src)
    base = tables[SETS[0]]  # the loosest set: every held-out row comes from it
    if len(base) == 0:
        raise ValueError(f"{src / SET_FILES[SETS[0]]}: no clips to split")
    col = _source_column(base)
    held = set(heldout_sources(base[col]))
    if not held:
        raise ValueError(f"{src / SET_FILES[SETS[0]]}: one source video only; a held-out split needs two or more")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, df in tables.items():
        train = df[~df[_source_column(df)].astype(str).isin(held)].reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{name}: every clip is held out; nothing is left to train on")
        write_table(train, out / SET_FILES[name])
        counts[f"train_{name}"] = len(train)
    heldout = base[base[col].astype(str).isin(held)].reset_index(drop=True)
    write_table(heldout, out / HELDOUT_FILE)
    counts["heldout"] = len(heldout)
    counts["heldout_sources"] = len(held)
    write_text_atomic(out / "split.json", json.dumps({"counts": counts, "heldout_sources": sorted(held),
                                                      "rule": "file name prefix 'heldout_'" if any(
                                                          os.path.basename(s).startswith(HELDOUT_PREFIX)
                                                          for s in held) else f"sha256 of the file name < "
                                                                              f"{fraction}"}, indent=1))
    return SplitResult(out, counts, sorted(held))
