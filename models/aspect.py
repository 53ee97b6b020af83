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
