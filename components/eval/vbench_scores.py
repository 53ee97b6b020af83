"""VBench's normalisation and Quality/Semantic/Total aggregation, with its constants.

Constants copied from VBench `scripts/constant.py` at commit 45e79ec1 (= PyPI vbench 0.1.5), (how they combine:
`docs/eval.md`). Unlike VBench's `cal_final_score.py`, which sets a missing dimension to 0 and so
silently deflates the Total, `aggregate` refuses a partial set: a group score is null with the list of missing
dimensions unless every member is a real VBench value.
"""

from __future__ import annotations

from typing import Mapping

VBENCH_COMMIT = "45e79ec14e69a2187202c675d2dbce1a71843d53"
VBENCH_VERSION = "0.1.5"

# name: (min, max, weight, group)
DIMENSIONS: dict[str, tuple[float, float, float, str]] = {
    "subject_consistency": (0.1462, 1.0, 1.0, "quality"),
    "background_consistency": (0.2615, 1.0, 1.0, "quality"),
    "temporal_flickering": (0.6293, 1.0, 1.0, "quality"),
    "motion_smoothness": (0.706, 0.9975, 1.0, "quality"),
    "dynamic_degree": (0.0, 1.0, 0.5, "quality"),
    "aesthetic_quality": (0.0, 1.0, 1.0, "quality"),
    "imaging_quality": (0.0, 1.0, 1.0, "quality"),
    "object_class": (0.0, 1.0, 1.0, "semantic"),
    "multiple_objects": (0.0, 1.0, 1.0, "semantic"),
    "human_action": (0.0, 1.0, 1.0, "semantic"),
    "color": (0.0, 1.0, 1.0, "semantic"),
    "spatial_relationship": (0.0, 1.0, 1.0, "semantic"),
    "scene": (0.0, 0.8222, 1.0, "semantic"),
    "appearance_style": (0.0009, 0.2855, 1.0, "semantic"),
    "temporal_style": (0.0, 0.364, 1.0, "semantic"),
    "overall_consistency": (0.0, 0.364, 1.0, "semantic"),
}
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0
QUALITY_DIMS = [d for d, v in DIMENSIONS.items() if v[3] == "quality"]
SEMANTIC_DIMS = [d for d, v in DIMENSIONS.items() if v[3] == "semantic"]


def normalize(dimension: str, raw: float) -> float:
    """(raw - Min)/(Max - Min)·W, not clipped (VBench does not clip either)."""
    if dimension not in DIMENSIONS:
        raise KeyError(f"unknown VBench dimension {dimension!r}; known: {sorted(DIMENSIONS)}")
    lo, hi, w, _ = DIMENSIONS[dimension]
    return (float(raw) - lo) / (hi - lo) * w


def _group(official: Mapping[str, float], dims: list[str]) -> dict:
    missing = [d for d in dims if official.get(d) is None]
    if missing:
        return {"value": None, "missing": missing}
    total_w = sum(DIMENSIONS[d][2] for d in dims)
    return {"value": sum(normalize(d, official[d]) for d in dims) / total_w, "missing": []}


def total_from_groups(quality: float, semantic: float) -> float:
    return (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)


def aggregate(official: Mapping[str, float | None]) -> dict:
    """Quality, Semantic and Total (fractions, x100 for the leaderboard's %) from **official VBench values only**.

    Pass only dimensions that VBench itself computed; proxies must never be passed here. A group is null with
    `missing` when any member is absent; Total is null unless both groups exist.
    """
    unknown = sorted(set(official) - set(DIMENSIONS))
    if unknown:
        raise KeyError(f"unknown VBench dimension(s) {unknown}")
    q, s = _group(official, QUALITY_DIMS), _group(official, SEMANTIC_DIMS)
    if q["value"] is not None and s["value"] is not None:
        total = {"value": total_from_groups(q["value"], s["value"]), "missing": []}
    else:
        total = {"value": None, "missing": q["missing"] + s["missing"]}
    return {"quality_score": q, "semantic_score": s, "total_score": total,
            "normalized": {d: normalize(d, v) for d, v in official.items() if v is not None}}


# Published rows (%, `docs/eval.md`) with all three numbers, for the report's reference chart.
PUBLISHED = [
    # (model, total, quality, semantic, note)
    ("Wan2.1-14B", 86.22, 86.67, 84.44, "augmented prompts"),
    ("Open-Sora 2.0", 84.34, 85.40, 80.12, "ContentV README"),
    ("Sora", 84.28, 85.51, 79.35, ""),
    ("Wan2.1-1.3B", 83.96, 84.92, 80.10, ""),
    ("MiniMax-Video-01", 83.41, 84.85, 77.65, ""),
    ("HunyuanVideo", 83.24, 85.09, 75.82, "prompt rewrite"),
    ("Runway Gen-3", 82.32, 84.11, 75.17, ""),
    ("CogVideoX1.5-5B", 82.17, 82.78, 79.76, "GPT-enhanced prompts"),
    ("Kling (2024-07)", 81.85, 83.39, 75.68, ""),
    ("CogVideoX-5B", 81.61, 82.75, 77.04, "GPT-enhanced prompts"),
    ("Open-Sora 1.2", 79.23, 80.71, 73.30, ""),
    ("Open-Sora 1.0", 75.91, 78.81, 64.28, ""),
]
