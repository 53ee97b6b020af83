"""Pixel sizes for a resolution name and aspect ratio (docs/models.md#buckets): the inference and the training tables.

Both tables start from Open-Sora's list of nine width:height ratios, horizontal ones plus '9:16' and '5:8'
(`TRAINING_ASPECT_RATIOS`). For a pixel budget P and divisor D (16 = VAE 8 x patch 2; 32 for the DC-AE with
patch 1) each listed ratio w:h gets W = floor(sqrt(P*w/h)/D)*D, H = floor(P/W/D)*D, and its transposed ratio
h:w gets the transposed size. The transposed entries are written last and overwrite listed ones, which is why
'16:9' is the transpose of the size computed for '9:16' and the other way round, and why '3:4', '2:3', '1:2' are
transposes of '4:3', '3:2', '2:1' rather than computed from their own ratio. docs/fidelity.md has the details.
"""

from __future__ import annotations

import math
import re

# Pixel budgets of the named resolutions (`num_pixels_from_name`: 'Npx' -> N^2, 'Np' -> int(N^2 * 16 / 9)).
RESOLUTIONS = {"256px": 256 * 256, "360p": 230_400, "480p": 409_600, "720p": 921_600, "768px": 768 * 768,
               "1024px": 1024 * 1024, "1080p": 2_073_600}
ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "3:2", "4:3", "1:1", "3:4", "2:3", "9:16", "5:8", "1:2")
SIZE_RULES = ("official", "direct")


def parse_aspect_ratio(ar: str) -> float:
    """'16:9' -> width/height = 1.777..."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", ar)
    if not m or float(m.group(2)) == 0:
        raise ValueError(f"aspect ratio must look like '16:9' (width:height), got {ar!r}")
    return float(m.group(1)) / float(m.group(2))


def _floor_size(pixels: int, ratio: float, d: int) -> tuple[int, int]:
    """(H, W) of the floor form: W = floor(sqrt(P*ratio)/D)*D, H = floor(P/W/D)*D."""
    w = int(math.sqrt(pixels * ratio) // d) * d
    h = int((pixels / w) // d) * d
    return h, w


def inference_table(resolution: str, divisor: int = 16) -> dict[str, tuple[int, int]]:
    """The released model's inference sizes {ratio 'w:h': (height, width)} before rounding up to 16: the floor
    form of every listed ratio, then the transposed entries on top (no pixel adjustment, no de-duplication)."""
    pixels = num_pixels_from_name(resolution)
    d = int(divisor)
    table: dict[str, tuple[int, int]] = {}
    vertical: dict[str, tuple[int, int]] = {}
    for ratio in TRAINING_ASPECT_RATIOS:
        h, w = _floor_size(pixels, parse_aspect_ratio(ratio), d)
        table[ratio] = (h, w)
        vertical[_transpose(ratio)] = (w, h)
    table.update(vertical)
    return table


def inference_size(resolution: str, aspect_ratio: str, divisor: int = 16, rule: str = "official") -> tuple[int, int]:
    """(height, width) in pixels for generation, rounded up to multiples of 16.

    rule="official" (default) looks the ratio up in `inference_table`, as the released sampler does:
    ('256px', '16:9') -> (192, 336), ('256px', '3:4') -> (288, 224), ('768px', '4:3') -> (656, 880). A ratio
    the released table does not list (e.g. '21:9') falls back to the direct form. rule="direct" computes every
    ratio from its own value with the floor form ('256px', '3:4') -> (304, 208).
    """
    if rule not in SIZE_RULES:
        raise ValueError(f"unknown size rule {rule!r}; expected one of {SIZE_RULES}")
    if "_" in resolution:
        raise ValueError(f"inference resolution must be a plain name like '256px' or '720p', got {resolution!r} "
                         f"(usual ones: {sorted(RESOLUTIONS)})")
    pixels = num_pixels_from_name(resolution)  # any 'Npx' / 'Np', as the released sampler accepts
    ratio = parse_aspect_ratio(aspect_ratio)
    table = inference_table(resolution, divisor) if rule == "official" else {}
    key = _canonical(aspect_ratio)
    if key in table:
        h, w = table[key]
    else:
        h, w = _floor_size(pixels, ratio, int(divisor))
    return math.ceil(h / 16) * 16, math.ceil(w / 16) * 16


def _transpose(ratio: str) -> str:
    return ":".join(ratio.split(":")[::-1])


def _canonical(ratio: str) -> str:
    """' 16 : 9 ' -> '16:9' (the table keys are written without spaces)."""
    return ":".join(part.strip() for part in ratio.split(":"))


# --- training form (docs/models.md#buckets) --------------------------------------------------------------------------
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
    """Training size table {ratio 'w:h': (height, width)} for a bucket resolution name (docs/models.md#buckets).

    Start from the floor form (W = ⌊√(P·w/h)/D⌋·D, H = ⌊P/W/D⌋·D), then try (H∓D, W) and (H, W∓D) in that
    order, moving whenever a candidate is strictly closer to the pixel budget P. A listed ratio whose size an
    earlier listed ratio already has is skipped (with its transposed entry). The transposed entries (h:w, size
    transposed) are then written over the table, so a size can appear twice: at 256px with D = 32, '16:9'
    (192, 352) repeats '2:1' and '1:2' (352, 192) repeats '9:16'. The released table keeps these repeats and
    `closest_aspect_ratio` chooses among them, so they stay. Suffix '_ar4:3' keeps one ratio, '_max' keeps the
    largest-area one.
    256px: 16:9 -> (192, 336), 1:1 -> (256, 256), 4:3 -> (224, 288), 3:2 -> (208, 320), 2:1 -> (176, 368),
    2.39:1 -> (160, 400); 768px 4:3 -> (672, 880). D = 16 for the HunyuanVAE (8 × patch 2), 32 for the DC-AE.
    """
    pixels = num_pixels_from_name(resolution)
    d = int(divisor)
    table: dict[str, tuple[int, int]] = {}
    vertical: dict[str, tuple[int, int]] = {}
    for ratio in TRAINING_ASPECT_RATIOS:
        h, w = _floor_size(pixels, parse_aspect_ratio(ratio), d)
        diff = abs(h * w - pixels)
        for ch, cw in ((h - d, w), (h + d, w), (h, w - d), (h, w + d)):
            if abs(ch * cw - pixels) < diff:
                h, w, diff = ch, cw, abs(ch * cw - pixels)
        if (h, w) in table.values():
            continue
        table[ratio] = (h, w)
        vertical[_transpose(ratio)] = (w, h)
    table.update(vertical)

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


def height_over_width(ratio: str) -> float:
    """'16:9' -> 9 / 16, computed as that one division (1 / (16 / 9) can differ in the last bit, which moves
    exact ties such as h/w = 1.925 between '1:2' and '1:1.85')."""
    width, height = (float(x) for x in ratio.split(":"))
    return height / width


def closest_aspect_ratio(height: float, width: float, ratios) -> str:
    """The ratio name (w:h) in `ratios` whose h/w is closest to height/width; ties go to the earlier name."""
    ar = height / width
    return min(ratios, key=lambda r: abs(ar - height_over_width(r)))
