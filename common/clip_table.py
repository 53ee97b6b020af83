"""The clip table: the one contract between ingest, filter, split, the dataset in DVC, training and eval.

A clip table is Parquet (the steps write it) or CSV/TSV/JSONL (a person may write it), one row per clip. What
the columns mean is in `docs/curation.md` ("The clip table"). This module is the only place that names the
columns, the curated sets and their file names, and the only code that reads or writes such a table:

    read_table(path)            any of the formats above, as it is on disk
    load_table(path_or_df)      read, check the training columns, resolve relative paths against the table's folder
    write_table(df, path)       Parquet (or CSV by suffix), under a temporary name, then renamed into place
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from soraflow.common.atomic import atomic_path

__all__ = ["REQUIRED_COLUMNS", "CACHED_COLUMNS", "PROVENANCE_COLUMNS", "SETS", "SET_FILES", "HELDOUT_FILE",
           "NEEDS_CAPTION_FILE", "FULL_FILE", "read_table", "load_table", "write_table"]

# what every training row has (`text` may be empty: a clip without a caption)
REQUIRED_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "resolution", "fps")
# the pre-encoded form of a row (latents and text embeddings on disk); with these, `text` is not needed
CACHED_COLUMNS = ("latents_path", "text_t5_path", "text_clip_path")
CACHED_REQUIRED = ("path", "num_frames", "height", "width", "fps") + CACHED_COLUMNS
# where ingest cut the clip from (kept through filter and split; `source` decides the held-out split)
PROVENANCE_COLUMNS = ("source", "source_row", "source_sha256", "shot", "start_frame", "end_frame", "start_time",
                      "end_time", "crop")

# the curated sets the filter writes, the looser first (each stricter set is a subset of the one before)
SETS = ("set_256px", "set_768px")
SET_FILES = {name: f"{name}.parquet" for name in SETS}
FULL_FILE = "full.parquet"  # every clip with its scores and rejection reason
NEEDS_CAPTION_FILE = "needs_caption.parquet"  # clips that passed but have no caption
HELDOUT_FILE = "heldout.parquet"  # the split step's held-out rows of set_256px

_PARQUET = (".parquet", ".pq")
_CSV = {".csv": ",", ".tsv": "\t"}
_JSON = (".jsonl", ".ndjson", ".json")


def read_table(path: str | Path, *, strings: bool = False) -> pd.DataFrame:
    """The table at `path`, by its suffix. CSV cells that are empty become missing values, nothing else does
    (a caption "NA" stays text); `strings=True` keeps every CSV/JSON cell as written (a manifest of paths)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"clip table {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in _PARQUET:
            return pd.read_parquet(path)
        if suffix in _CSV:
            if strings:
                return pd.read_csv(path, sep=_CSV[suffix], dtype=str, keep_default_na=False)
            return pd.read_csv(path, sep=_CSV[suffix], keep_default_na=False, na_values=[""])
        if suffix in _JSON:
            return pd.read_json(path, lines=suffix != ".json", **({"dtype": False} if strings else {}))
    except (ValueError, OSError):
        raise
    except Exception as exc:  # pandas/pyarrow parse errors have many types
        raise ValueError(f"{path}: cannot read the table ({exc})") from exc
    raise ValueError(f"{path}: a table is .parquet, .csv, .tsv or .jsonl, not {path.suffix!r}")


def load_table(table, *, cached: bool | None = None) -> pd.DataFrame:
    """A training table (a path or a DataFrame) with its columns checked and the index reset to 0..N-1.

    Relative `path`/cached paths are resolved against the table's folder, so a table that sits beside its clips
    (a DVC checkout) works wherever it is. `cached=None` requires the cached columns only when all are present.
    """
    base = None
    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        path = Path(table)
        if not path.exists():
            raise FileNotFoundError(f"{path}: clip table does not exist")
        df = read_table(path)
        base = path.parent
    if cached is None:
        cached = all(c in df.columns for c in CACHED_COLUMNS)
    required = CACHED_REQUIRED if cached else REQUIRED_COLUMNS
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"clip table {table if base is not None else '<DataFrame>'} lacks columns {missing}; "
                         f"has {list(df.columns)}")
    df = df.reset_index(drop=True)
    if "text" in df.columns:
        df["text"] = df["text"].fillna("").astype(str)
    if base is not None:
        for col in ("path",) + (CACHED_COLUMNS if cached else ()):
            df[col] = [p if not isinstance(p, str) or os.path.isabs(p) else str(base / p) for p in df[col]]
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Parquet (or CSV when `path` ends in .csv), written to a temporary name in the same folder and renamed
    into place, so a reader never sees half a table."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path
