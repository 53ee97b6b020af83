"""VMAF motion computed from decoded luma, with the same integer arithmetic as ffmpeg's `vmafmotion` filter.

ffmpeg `libavfilter/vf_vmafmotion.c` (the score Open-Sora appends to captions, `docs/curation.md`) per frame:

1. blur the luma with the 5-tap Gaussian `FILTER_5` in Q15 fixed point, taps `lrint(f * 2**15)`
   = (1785, 8002, 13193, 8002, 1785); vertical pass first (`sum >> bit_depth`), then horizontal
   (`sum >> 15`), so the blurred value is the pixel scaled to 8 bits times 2**7 in integers;
   borders mirror without repeating the edge at the start (index -1 -> 1) and with it at the end (n -> n-1);
2. score = sum |blur(prev) - blur(cur)| / (w * h * 2**7); the first frame scores 0;
3. the clip score ("VMAF Motion avg") is the mean over all frames, the first frame's 0 included.

Unlike libvmaf's `motion2` feature, ffmpeg takes no minimum of the two neighbouring differences; the test
checks this module against the ffmpeg binary, frame by frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VMAF_TAPS", "vmaf_blur", "VmafMotion"]

VMAF_TAPS = (1785, 8002, 13193, 8002, 1785)


def _mirror_pad(a: np.ndarray, axis: int) -> np.ndarray:
    """Pad 2 on each side along `axis` the way vf_vmafmotion.c indexes taps outside the frame."""
    n = a.shape[axis]
    idx = np.abs(np.arange(-2, n + 2))
    idx[idx >= n] = 2 * n - 1 - idx[idx >= n]
    return np.take(a, idx, axis=axis)


def vmaf_blur(luma: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """The blurred luma of one frame, int32, exactly as ffmpeg's integer convolution computes it."""
    t0, t1, t2 = VMAF_TAPS[:3]
    h, w = luma.shape
    p = _mirror_pad(luma.astype(np.int32), 0)
    v = (p[0:h] + p[4:h + 4]) * t0 + (p[1:h + 1] + p[3:h + 3]) * t1 + p[2:h + 2] * t2
    v >>= bit_depth
    q = _mirror_pad(v, 1)
    out = (q[:, 0:w] + q[:, 4:w + 4]) * t0 + (q[:, 1:w + 1] + q[:, 3:w + 3]) * t1 + q[:, 2:w + 2] * t2
    out >>= 15
    return out


class VmafMotion:
    """Streaming accumulator: `update(luma)` once per frame in decode order; `scores` per frame, `mean`."""

    def __init__(self):
        self._prev: np.ndarray | None = None
        self.scores: list[float] = []

    def update(self, luma: np.ndarray, bit_depth: int = 8) -> float:
        cur = vmaf_blur(luma, bit_depth)
        if self._prev is None:
            score = 0.0
        else:
            sad = int(np.abs(cur - self._prev).sum(dtype=np.int64))
            score = sad / (cur.size << 7)
        self._prev = cur
        self.scores.append(score)
        return score

    @property
    def mean(self) -> float:
        return float(sum(self.scores) / len(self.scores)) if self.scores else 0.0
