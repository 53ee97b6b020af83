"""The clip table (docs/models.md#dataset-files): CSV or Parquet with
`path,text,num_frames,height,width,aspect_ratio,resolution,fps`
(optional `score_vmafmotion`; cached mode adds `latents_path,text_t5_path,text_clip_path`)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = ["REQUIRED_COLUMNS", "CACHED_COLUMNS", "load_table"]

REQUIRED_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "resolution", "fps")
CACHED_COLUMNS = ("latents_path", "text_t5_path", "text_clip_path")


def load_table(table, *, cached: bool | None = None) -> pd.DataFrame:
    """Read a CSV/Parquet table (or take a DataFrame), check its columns, reset the index to 0..N-1.

    Relative `path`/cached paths are resolved against the table's folder. `cached=None` requires the cached
    columns only when all of them are present.
    """
    base = None
    if isinstance(table, pd.DataFrame):
        df = table.copy()
    else:
        path = Path(table)
        if not path.exists():
            raise FileNotFoundError(f"{path}: clip table does not exist")
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", keep_default_na=False,
                             na_values=[""])
        else:
            raise ValueError(f"{path}: clip table must be .csv or .parquet")
        base = path.parent
    if cached is None:
        cached = all(c in df.columns for c in CACHED_COLUMNS)
    required = REQUIRED_COLUMNS if not cached else ("path", "num_frames", "height", "width", "fps") + CACHED_COLUMNS
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
