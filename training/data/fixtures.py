"""Tiny synthetic clip tables for tests and the embedded demo.

`make_video_table(dir, specs)` writes one file per spec and a CSV clip table. Video frame i is a flat colour
that encodes its index (`frame_code(i)`; `decode_frame_index` reads it back after H.264), so a test can tell which
source frames a decoder returned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from soraflow.common.video_io import write_video

__all__ = ["frame_code", "decode_frame_index", "make_video_table", "KINDS"]

KINDS = ("video", "image", "truncated", "empty", "text", "missing")


def frame_code(i: int) -> tuple[int, int, int]:
    """RGB of source frame i: R = 8·(i mod 32) + 4, G = 32·(i // 32) + 16 (mod 256), B = 128."""
    return (8 * (i % 32) + 4, (32 * (i // 32) + 16) % 256, 128)


def decode_frame_index(rgb) -> int:
    """Inverse of `frame_code` from a (mean) RGB value, tolerant to codec error of a few levels."""
    r, g = float(rgb[0]), float(rgb[1])
    return int(round((r - 4) / 8)) % 32 + 32 * int(round((g - 16) / 32))


def _frames(num_frames: int, height: int, width: int) -> np.ndarray:
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        out[i] = frame_code(i)
    return out


def make_video_table(directory, specs: list[dict], *, table_name: str = "clips.csv",
                     motion: bool = True) -> Path:
    """Write clips and a CSV table; returns the table path.

    Each spec: `kind` (one of KINDS, default "video"), `num_frames`, `height`, `width`, `fps`, optional `name`,
    `text`, `motion` (score_vmafmotion). "image" writes a PNG (num_frames 1); "truncated" writes a valid mp4 cut to a
    third of its bytes; "empty" a 0-byte .mp4; "text" a text file named .mp4; "missing" lists a path that does not
    exist. The table's metadata columns are the numbers given here (what a probe would have said).
    """
    from PIL import Image

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, spec in enumerate(specs):
        kind = spec.get("kind", "video")
        if kind not in KINDS:
            raise ValueError(f"unknown fixture kind {kind!r}; known: {KINDS}")
        n = int(spec.get("num_frames", 1 if kind == "image" else 8))
        h, w = int(spec.get("height", 64)), int(spec.get("width", 64))
        fps = float(spec.get("fps", 24.0))
        name = spec.get("name", f"clip{i:03d}")
        if kind == "image":
            path = d / f"{name}.png"
            Image.fromarray(_frames(1, h, w)[0]).save(path)
        else:
            path = d / f"{name}.mp4"
            if kind in ("video", "truncated"):
                write_video(path, _frames(n, h, w), fps=fps)
                if kind == "truncated":
                    data = path.read_bytes()
                    path.write_bytes(data[: len(data) // 3])
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "text":
                path.write_text("this is not a video\n" * 20)
        row = {"path": str(path), "text": spec.get("text", f"a test clip number {i}"), "num_frames": n,
               "height": h, "width": w, "aspect_ratio": h / w, "resolution": h * w,
               "fps": float("nan") if kind == "image" and "fps" not in spec else fps}
        if motion:
            row["score_vmafmotion"] = float(spec.get("motion", 3.0))
        rows.append(row)
    table = d / table_name
    pd.DataFrame(rows).to_csv(table, index=False)
    return table
