"""Caption suffixes that carry FPS and motion score into the text encoders (spec §C.7, §H.13).

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


def training_caption(caption: str, fps: float, vmaf: float, max_fps: int = 24) -> str:
    """Training-time caption: ``f"{caption} {target_fps} FPS, {round(vmaf)} motion score."``.

    ``fps`` is the *source* fps; the printed value is ``map_target_fps(fps, max_fps)[0]`` written the
    way Python prints it (``23.976``, ``15``). ``round`` is Python's (banker's) rounding.
    """
    target_fps, _ = map_target_fps(fps, max_fps)
    return f"{caption} {target_fps} FPS, {round(vmaf)} motion score."


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
