"""Pixel sizes for a resolution name and aspect ratio (spec §D.4), inference form.

For a pixel budget P and divisor D (16 = VAE 8 x patch 2; 32 for the DC-AE with patch 1):
W = floor(sqrt(P*w/h)/D)*D, H = floor(P/W/D)*D. Inference sizes are then rounded up to multiples of 16.
"""

from __future__ import annotations

import math
import re

RESOLUTIONS = {"256px": 256 * 256, "360p": 360 * 640, "480p": 480 * 853, "720p": 720 * 1280, "768px": 768 * 768,
               "1024px": 1024 * 1024, "1080p": 1080 * 1920}
ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "3:2", "4:3", "1:1", "3:4", "2:3", "9:16", "5:8", "1:2")


def parse_aspect_ratio(ar: str) -> float:
    """'16:9' -> width/height = 1.777..."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", ar)
    if not m or float(m.group(2)) == 0:
        raise ValueError(f"aspect ratio must look like '16:9' (width:height), got {ar!r}")
    return float(m.group(1)) / float(m.group(2))


def inference_size(resolution: str, aspect_ratio: str, divisor: int = 16) -> tuple[int, int]:
    """(height, width) in pixels, e.g. ('256px', '16:9') -> (192, 336); ('768px', '4:3') -> (656, 880)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; known: {sorted(RESOLUTIONS)}")
    pixels = RESOLUTIONS[resolution]
    ratio = parse_aspect_ratio(aspect_ratio)
    w = math.floor(math.sqrt(pixels * ratio) / divisor) * divisor
    h = math.floor(pixels / w / divisor) * divisor
    return math.ceil(h / 16) * 16, math.ceil(w / 16) * 16


# --- training form (spec §D.4, §H.15) --------------------------------------------------------------------------
# Open-Sora's training list (width:height), horizontal first; vertical counterparts are appended after them.
TRAINING_ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1")


def num_pixels_from_name(resolution: str) -> int:
    """Pixel budget of a bucket resolution name: '256px' -> 256², '360p' -> int(360²·16/9); a '_ar1:1'/'_max'
    suffix is ignored here."""
    base = resolution.split("_")[0]
    m = re.fullmatch(r"(\d+)(px|p)", base)
    if not m:
        raise ValueError(f"resolution name must look like '256px' or '360p' (optionally '_ar1:1' / '_max'), "
                         f"got {resolution!r}")
    size = int(m.group(1))
    return size * size if m.group(2) == "px" else int(size * size / 9 * 16)


def training_aspect_ratios(resolution: str, divisor: int = 16) -> dict[str, tuple[int, int]]:
    """Training size table {ratio 'w:h': (height, width)} for a bucket resolution name (spec §D.4).

    Start from the floor form (W = ⌊√(P·w/h)/D⌋·D, H = ⌊P/W/D⌋·D), then try (H∓D, W) and (H, W∓D) in that
    order, moving whenever a candidate is strictly closer to the pixel budget P. A ratio whose size is already
    taken by an earlier ratio is dropped (with its vertical counterpart); vertical counterparts (h:w, transposed
    size) follow the horizontal ones, again without repeating a size. Suffix '_ar4:3' keeps one ratio, '_max' keeps the largest-area one.
    256px: 16:9 -> (192, 336), 1:1 -> (256, 256), 4:3 -> (224, 288), 3:2 -> (208, 320), 2:1 -> (176, 368),
    2.39:1 -> (160, 400); 768px 4:3 -> (672, 880). D = 16 for the HunyuanVAE (8 × patch 2), 32 for the DC-AE.
    """
    pixels = num_pixels_from_name(resolution)
    d = int(divisor)
    table: dict[str, tuple[int, int]] = {}
    vertical: dict[str, tuple[int, int]] = {}
    for ratio in TRAINING_ASPECT_RATIOS:
        wr, hr = (float(x) for x in ratio.split(":"))
        w = int(math.sqrt(pixels * wr / hr) // d) * d
        h = int((pixels / w) // d) * d
        diff = abs(h * w - pixels)
        for ch, cw in ((h - d, w), (h + d, w), (h, w - d), (h, w + d)):
            if abs(ch * cw - pixels) < diff:
                h, w, diff = ch, cw, abs(ch * cw - pixels)
        if (h, w) in table.values():
            continue
        table[ratio] = (h, w)
        vertical[":".join(ratio.split(":")[::-1])] = (w, h)
    table.update(vertical)
    unique: dict[str, tuple[int, int]] = {}
    for ratio, size in table.items():  # a vertical size can repeat a horizontal one (e.g. D=32): keep the first
        if size not in unique.values():
            unique[ratio] = size
    table = unique

    setting = resolution.split("_", 1)[1] if "_" in resolution else ""
    if setting == "max":
        best = max(table, key=lambda k: table[k][0] * table[k][1])
        table = {best: table[best]}
    elif setting.startswith("ar"):
        ratio = setting[2:]
        if ratio not in table:
            raise ValueError(f"aspect ratio {ratio!r} is not in the training table of {resolution!r}: {sorted(table)}")
        table = {ratio: table[ratio]}
    elif setting:
        raise ValueError(f"unknown resolution setting {setting!r} in {resolution!r} (use '_ar<w:h>' or '_max')")
    return table


def closest_aspect_ratio(height: float, width: float, ratios) -> str:
    """The ratio name (w:h) in `ratios` whose h/w is closest to height/width; ties go to the earlier name."""
    ar = height / width
    return min(ratios, key=lambda r: abs(ar - 1.0 / parse_aspect_ratio(r)))
