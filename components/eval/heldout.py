"""The eval's held-out clips: which they are and the caption each gets (the scoring is soraflow.training.heldout's).

`reference_clips` is a clip table (.csv/.parquet/.jsonl with a `path` column, optional `text`; relative paths
are resolved against the table's folder) or a folder of videos.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi", ".webm"}


class HeldoutCache:
    """Held-out results that depend on an autoencoder's weights and a clip, not on the DiT: a trained network
    and the same network at initialisation share their autoencoder, and the learning checks score the trained
    autoencoders again, so each (weights, clip view, clip index, dtype) is computed once per eval. Without a
    weights file (a seeded random autoencoder) nothing is shared."""

    def __init__(self):
        self._store: dict = {}
        self.hits = 0

    def get(self, what: str, weights, key: tuple, compute):
        if not weights:
            return compute()
        full = (what, str(Path(weights).resolve()), *key)
        if full in self._store:
            self.hits += 1
        else:
            self._store[full] = compute()
        return self._store[full]


def list_reference_clips(spec: str) -> list[dict]:
    p = Path(spec)
    if p.is_dir():
        return [{"path": str(f), "text": "", "caption": ""} for f in sorted(p.iterdir())
                if f.suffix.lower() in VIDEO_EXT]
    if not p.is_file():
        raise FileNotFoundError(f"reference clips {spec!r}: no such folder or clip table")
    from soraflow.common.clip_table import read_table

    df = read_table(p)
    if "path" not in df.columns:
        raise ValueError(f"reference clips {p}: clip table has no 'path' column (columns: {list(df.columns)})")
    from soraflow.training.data.dataset import make_caption

    rows = []
    for _, r in df.iterrows():
        path = Path(str(r["path"]))
        text = str(r["text"]) if "text" in df.columns and isinstance(r["text"], str) else ""
        fps = float(r["fps"]) if "fps" in df.columns and r["fps"] == r["fps"] else None
        motion = (float(r["score_vmafmotion"]) if "score_vmafmotion" in df.columns
                  and r["score_vmafmotion"] == r["score_vmafmotion"] else None)
        # the caption the training data loader gives this clip (fps and motion suffix), as the trainer scores it
        rows.append({"path": str(path if path.is_absolute() else p.parent / path), "text": text,
                     "caption": make_caption(text, fps, motion) if text else ""})
    return rows
