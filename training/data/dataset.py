"""`VideoTextDataset`: clip table rows -> training samples (docs/models.md#dataset-files, #loading-and-transforms,
#motion-score-and-fps-in-captions).

`dataset["idx-T-H-W"]` decodes row `idx` through `soraflow.common.video_io` (PyAV): a temporal window of
`T·interval` frames (interval from the fps rule) at a random start, frame indices
`linspace(start, start + T·interval − 1, T)` (Open-Sora's `temporal_random_crop`), resized to cover H×W
(bilinear for video, bicubic for images) and centre-cropped, as float [3, T, H, W] in [-1, 1]. Images
(jpg/png/...) are 1-frame videos. The random start is seeded by (seed, epoch, idx), so an item is reproducible.

A clip that cannot be read never raises: the item comes back as `{"skipped": True, "reason": ..., ...}`, a warning
names the file and the reason, and `skip_counts` counts it per reason (per process; the DataLoader wrapper keeps
the counts of what its collate dropped).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from soraflow.common.video_io import VideoReadError, read_video_frames
from soraflow.models.text.captions import map_target_fps, training_caption

from .sampler import parse_index
from soraflow.common.clip_table import CACHED_COLUMNS, load_table

__all__ = ["VideoTextDataset", "IMAGE_EXTENSIONS", "temporal_indices", "resize_crop", "make_caption",
           "SKIP_REASONS"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SKIP_REASONS = ("missing_file", "empty_file", "unreadable", "too_short", "bad_index", "cache_unreadable", "error")


def is_image_path(path: str) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def temporal_indices(total_frames: int, num_frames: int, interval: int, rng: np.random.Generator) -> np.ndarray:
    """Random window of `num_frames·interval` frames inside `total_frames`; indices linspace(start, end−1, T).

    Raises ValueError when the clip is too short."""
    size = num_frames * interval
    if total_frames < size:
        raise ValueError(f"clip has {total_frames} frames, needs {size} ({num_frames} × interval {interval})")
    start = int(rng.integers(0, total_frames - size + 1))
    return np.linspace(start, start + size - 1, num_frames).astype(np.int64)


def resize_crop(frames: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """uint8/float [T, C, h, w] -> float [T, C, H, W]: scale to cover H×W (aspect kept), then centre-crop."""
    t, c, h, w = frames.shape
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    x = frames.float()
    if (sh, sw) != (h, w):
        x = F.interpolate(x, size=(sh, sw), mode=mode, align_corners=False, antialias=scale < 1)
    top, left = (sh - height) // 2, (sw - width) // 2
    return x[:, :, top: top + height, left: left + width]


_SUFFIX = re.compile(r"\d+(\.\d+)? FPS(, \d+ motion score)?\.$|\d+ motion score\.$")


def make_caption(text: str, fps: float | None, motion: float | None, fps_max: int = 24) -> str:
    """Training caption (docs/models.md#motion-score-and-fps-in-captions): the raw caption from the table plus
    `training_caption`'s suffix. This is the one
    place the suffix is appended (the curated tables store the raw caption with `fps` / `score_vmafmotion`).
    A missing part is left out like the released dataset: no usable fps -> "<text> {m} motion score.", no
    motion score -> "<text> {fps} FPS.", neither -> the text unchanged."""
    return training_caption(text, fps, motion, max_fps=fps_max)


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _load_tensor(path: str) -> torch.Tensor:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        tensors = load_file(path)
    else:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(tensors, torch.Tensor):
        return tensors
    if isinstance(tensors, dict) and len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ValueError(f"{path}: expected one tensor, found {type(tensors).__name__}"
                     f"{' with keys ' + str(sorted(tensors)) if isinstance(tensors, dict) else ''}")


class VideoTextDataset(Dataset):
    """Rows of a clip table, indexed by "idx-T-H-W" strings from `VariableVideoBatchSampler`."""

    def __init__(self, table, *, seed: int = 42, fps_max: int = 24, cached: bool | None = None,
                 use_motion_score: bool = True):
        self.table = load_table(table, cached=cached)
        self.cached = all(c in self.table.columns for c in CACHED_COLUMNS) if cached is None else bool(cached)
        self.seed, self.fps_max, self.epoch = int(seed), int(fps_max), 0
        self.use_motion = use_motion_score and "score_vmafmotion" in self.table.columns
        self.skip_counts: Counter = Counter()
        # plain lists: cheap to pickle into workers and index without pandas overhead
        self._paths = self.table["path"].astype(str).tolist()
        self._texts = self.table["text"].tolist() if "text" in self.table.columns else [""] * len(self.table)
        self._frames = self.table["num_frames"].astype(int).tolist()
        self._fps = [_num(v) for v in self.table["fps"].tolist()]
        self._motion = [_num(v) for v in self.table["score_vmafmotion"].tolist()] if self.use_motion else None
        self._cache_paths = ({c: self.table[c].astype(str).tolist() for c in CACHED_COLUMNS} if self.cached else None)
        suffixed = [i for i, t in enumerate(self._texts) if isinstance(t, str) and _SUFFIX.search(t)]
        if suffixed:  # curated before the filter stored raw captions: the suffix would appear twice
            log.warning("%d caption(s) already end with an FPS / motion-score suffix (first: row %d, %r); this "
                        "dataset appends it once more. Re-run the filter step to store raw captions.",
                        len(suffixed), suffixed[0], self._texts[suffixed[0]][-60:])

    def __len__(self) -> int:
        return len(self._paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def interval(self, idx: int) -> int:
        fps = self._fps[idx]
        return map_target_fps(fps, self.fps_max)[1] if fps and fps > 0 else 1

    # -- items ----------------------------------------------------------------------------------------------------
    def _skip(self, index, idx, path, reason: str, detail: str) -> dict:
        self.skip_counts[reason] += 1
        log.warning("skipping %s (row %s): %s: %s", path, idx, reason, detail)
        return {"skipped": True, "reason": reason, "detail": detail, "path": path, "index": index}

    def __getitem__(self, index) -> dict:
        idx, path = None, None
        try:
            idx, t, h, w = parse_index(index)
            if not 0 <= idx < len(self):
                raise IndexError(f"row {idx} outside the table of {len(self)} rows")
        except (ValueError, IndexError) as exc:
            return self._skip(index, idx, path, "bad_index", str(exc))
        path = self._paths[idx]
        try:
            return self._cached_item(index, idx, t, h, w) if self.cached else self._pixel_item(index, idx, t, h, w)
        except _Skip as s:
            return self._skip(index, idx, path, s.reason, s.detail)
        except Exception as exc:  # a batch step never dies on one bad clip
            return self._skip(index, idx, path, "error", f"{type(exc).__name__}: {exc}")

    def _caption(self, idx: int) -> str:
        return make_caption(self._texts[idx], self._fps[idx], self._motion[idx] if self._motion else None,
                            self.fps_max)

    def _pixel_item(self, index, idx: int, t: int, h: int, w: int) -> dict:
        path = self._paths[idx]
        if not os.path.exists(path):
            raise _Skip("missing_file", f"{path} does not exist")
        if os.path.getsize(path) == 0:
            raise _Skip("empty_file", f"{path} is 0 bytes")
        timing = None
        if is_image_path(path):
            video = self._read_image(path, h, w)
            interval, frame_ids = 1, [0]
            if t != 1:
                video = video.expand(-1, t, -1, -1).contiguous()  # an image asked as a T-frame clip: repeat it
        else:
            interval = self.interval(idx)
            rng = np.random.default_rng([self.seed, self.epoch, idx, 0x7E3])
            try:
                frame_ids = temporal_indices(self._frames[idx], t, interval, rng)
            except ValueError as exc:
                raise _Skip("too_short", str(exc)) from None
            t_decode = time.perf_counter()
            try:
                frames, _ = read_video_frames(path, frame_ids)
            except VideoReadError as exc:
                real = getattr(exc, "num_frames", None)
                if real is None:
                    raise _Skip("unreadable", str(exc)) from None
                # the table over-counts frames: redraw the window on the real count
                try:
                    frame_ids = temporal_indices(real, t, interval, rng)
                    frames, _ = read_video_frames(path, frame_ids)
                except (ValueError, VideoReadError) as exc2:
                    raise _Skip("too_short", str(exc2)) from None
            t_resize = time.perf_counter()
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, 3, h, w]
            video = resize_crop(x, h, w, "bilinear").div_(127.5).sub_(1.0).clamp_(-1, 1).permute(1, 0, 2, 3)
            frame_ids = [int(i) for i in frame_ids]
            # worker-side seconds of this item (the loader's figures: training/goodput.py step_time_breakdown)
            timing = {"decode_s": t_resize - t_decode, "resize_s": time.perf_counter() - t_resize}
        fps = self._fps[idx]
        target_fps = map_target_fps(fps, self.fps_max)[0] if fps and fps > 0 else None
        return {"video": video.contiguous(), "text": self._caption(idx), "fps": target_fps, "num_frames": t,
                "height": h, "width": w, "index": index, "row": idx, "path": path, "frame_indices": frame_ids,
                "timing": timing}

    def _read_image(self, path: str, h: int, w: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise _Skip("unreadable", f"{path}: not a readable image ({exc})") from None
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]  # [1, 3, h, w]
        x = resize_crop(x, h, w, "bicubic").div_(127.5).sub_(1.0).clamp_(-1, 1)
        return x.permute(1, 0, 2, 3)  # [3, 1, H, W]

    def _cached_item(self, index, idx: int, t: int, h: int, w: int) -> dict:
        out = {"index": index, "row": idx, "path": self._paths[idx], "num_frames": t, "height": h, "width": w}
        for col, key in zip(CACHED_COLUMNS, ("video", "text_t5", "text_clip")):
            p = self._cache_paths[col][idx]
            if not os.path.exists(p):
                raise _Skip("missing_file", f"{p} does not exist")
            try:
                out[key] = _load_tensor(p)
            except Exception as exc:
                raise _Skip("cache_unreadable", f"{p}: {type(exc).__name__}: {exc}") from None
        fps = self._fps[idx]
        out["fps"] = map_target_fps(fps, self.fps_max)[0] if fps and fps > 0 else None
        out["text"] = self._caption(idx)
        return out


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
