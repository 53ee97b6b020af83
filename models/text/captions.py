"""Caption suffixes that carry FPS and motion score into the text encoders
(docs/models.md#motion-score-and-fps-in-captions).

Open-Sora 2.0 has no dedicated FPS / motion embedding: both are appended to the caption text.
The training form and the inference form differ (comma vs period) -- this mirrors the reference
code exactly, mismatch included.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "map_target_fps",
    "training_caption",
    "motion_score_text",
    "ensure_sentence_ends_with_period",
    "check_fps_added",
    "inference_caption",
]


def map_target_fps(fps: float, max_fps: int = 24) -> tuple[float, int]:
    """Return ``(target_fps, sampling_interval)`` for a clip recorded at ``fps``.

    ``fps < max_fps``: the value is kept unchanged (float stays float, e.g. 23.976) with interval 1.
    Otherwise ``interval = ceil(fps / max_fps)`` and ``target_fps = floor(fps / interval)`` (an int):
    30 -> (15, 2), 25 -> (12, 2), 60 -> (20, 3), 24 -> (24, 1).
    """
    if fps < max_fps:
        return fps, 1
    interval = math.ceil(fps / max_fps)
    return math.floor(fps / interval), interval


def motion_score_text(vmaf: float) -> int:
    """The integer written for a motion score: ``int(v + 0.5)``, as the released dataset does (2.5 -> 3, where
    Python's ``round`` would give 2)."""
    return int(vmaf + 0.5)


def training_caption(caption: str, fps: float | None, vmaf: float | None, max_fps: int = 24) -> str:
    """Training-time caption: ``f"{caption} {target_fps} FPS, {motion} motion score."``.

    ``fps`` is the *source* fps; the printed value is ``map_target_fps(fps, max_fps)[0]`` written the way Python
    prints it (``23.976``, ``15``). Each part is left out when its value is unusable, like the released dataset:
    no FPS part when fps is missing, NaN or 0 (``map_target_fps`` gives 0 for NaN there), no motion part when
    the score is missing or NaN; with neither the caption is unchanged. The motion score is rounded half up
    (``motion_score_text``).
    """
    parts = []
    if fps is not None and not math.isnan(fps):
        target_fps, _ = map_target_fps(fps, max_fps)
        if target_fps != 0:
            parts.append(f"{target_fps} FPS")
    if vmaf is not None and not math.isnan(vmaf):
        parts.append(f"{motion_score_text(vmaf)} motion score")
    return f"{caption} {', '.join(parts)}." if parts else caption


def ensure_sentence_ends_with_period(sentence: str) -> str:
    """Strip surrounding whitespace and append ``"."`` unless the text already ends with one."""
    sentence = sentence.strip()
    if not sentence.endswith("."):
        sentence += "."
    return sentence


def check_fps_added(sentence: str) -> bool:
    """True when the text already ends with ``"<digits> FPS."``."""
    return re.search(r"\d+ FPS\.$", sentence) is not None


def inference_caption(prompt: str, fps: int | None = 24, motion_score: int | str | None = 4) -> str:
    """Inference-time caption: ``"<prompt>. {fps} FPS. {motion_score} motion score."``.

    Steps (reference ``add_fps_info_to_text`` then ``add_motion_score_to_text``): strip and ensure a
    trailing ``"."``; append ``f" {fps} FPS."`` unless the text already ends with ``"<n> FPS."``;
    append ``f" {motion_score} motion score."``. ``fps=None`` / ``motion_score=None`` skip that part.
    (``motion_score="dynamic"`` needs an external LLM in the reference and is not supported here.)
    """
    if motion_score == "dynamic":
        raise ValueError("motion_score='dynamic' needs an external LLM (GPT-4o upstream), which soraflow does not call; pass an integer score")
    text = prompt
    if fps is not None:
        text = ensure_sentence_ends_with_period(text)
        if not check_fps_added(text):
            text = text + f" {fps} FPS."
    if motion_score is not None:
        if fps is None:
            text = ensure_sentence_ends_with_period(text)
        text = f"{text} {motion_score} motion score."
    return text
