"""Per-clip scorers of the filter step (`docs/curation.md`, "Filter"), one per signal, in NeMo Curator's stage style.

Each scorer is a dataclass that declares the columns it reads (`reads`) and writes (`writes`); its knobs are
typed fields. A scorer never decides keep/reject: it only measures. Thresholds live in
`soraflow.components.filter.filter.FilterThresholds`, one set per pyramid level, so the same scores feed the looser
256px set and the stricter 768px set.

`score(clip)` returns a `ScoreResult`: `status` is "ok", "not_run" (a pluggable scorer without weights --
the reason says why; no score is invented) or "error" (the clip could not be scored; the reason names the
file). Decoding goes through `soraflow.common.video_io`, the one home of video I/O.
"""

from __future__ import annotations

import abc

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from soraflow.common.video_io import VideoReadError, iter_luma_frames, probe_video, read_video_frames
from soraflow.components.filter.motion import VmafMotion

__all__ = [
    "Clip",
    "ScoreResult",
    "Scorer",
    "DecodeCheck",
    "MotionScorer",
    "BlurScorer",
    "JitterScorer",
    "PerceptualHasher",
    "AestheticScorer",
    "OCRScorer",
    "find_duplicates",
    "hamming",
    "default_scorers",
]


def _cv2():
    import cv2  # opencv-python-headless; imported lazily so the module imports without it

    return cv2


class Clip:
    """One clip to score: probes at most once and caches decoded frames by index.

    `decode_once(indices, motion=True)` is the filter's fast path: one decoding pass over the whole file that
    keeps the RGB frames the scorers will ask for, feeds every frame's luma to the VMAF-motion accumulator and
    learns the true frame count. Scorers then read from the cache; a frame outside it (the header's count was
    wrong) is decoded on demand."""

    def __init__(self, path: str, num_frames: int | None = None):
        self.path = str(path)
        self._num_frames = int(num_frames) if num_frames and num_frames > 0 else None
        self._cache: dict[int, np.ndarray] = {}
        self._info = None
        self.motion: VmafMotion | None = None  # set by decode_once(motion=True)
        self.decode_error: VideoReadError | None = None  # set when that pass failed

    def decode_once(self, indices, motion: bool = True) -> None:
        """One pass over every frame; errors are kept in `decode_error` (DecodeCheck reports them)."""
        acc = VmafMotion() if motion else None
        count = 0
        try:
            for fr in iter_luma_frames(self.path, indices):
                if acc is not None:
                    acc.update(fr.luma, fr.bit_depth)
                if fr.rgb is not None:
                    self._cache[fr.index] = fr.rgb
                count = fr.index + 1
        except VideoReadError as exc:
            self.decode_error = exc
            return
        if count == 0:
            self.decode_error = VideoReadError(f"{self.path}: no frames decoded")
            return
        self._num_frames = count  # the decoded count, whatever the header or table said
        self.motion = acc

    @property
    def info(self):
        if self._info is None:
            self._info = probe_video(self.path)
        return self._info

    @property
    def num_frames(self) -> int:
        if self._num_frames is None:
            self._num_frames = max(1, int(self.info.num_frames))
        return self._num_frames

    def frames(self, indices) -> np.ndarray:
        """uint8 RGB [len(indices), H, W, 3]. If the header over-counts, the frame count is corrected once."""
        idx = [int(i) for i in indices]
        missing = sorted({i for i in idx if i not in self._cache})
        if missing:
            try:
                got, _ = read_video_frames(self.path, missing)
            except VideoReadError as exc:
                real = getattr(exc, "num_frames", 0)
                if not real:
                    raise
                self._num_frames = real  # header lied; clamp and retry with what exists
                idx = [min(i, real - 1) for i in idx]
                missing = sorted({i for i in idx if i not in self._cache})
                got, _ = read_video_frames(self.path, missing)
            for i, f in zip(missing, got):
                self._cache[i] = f
        return np.stack([self._cache[i] for i in idx])

    def uniform_indices(self, k: int) -> list[int]:
        n = self.num_frames
        if n <= k:
            return list(range(n))
        return [int(round(x)) for x in np.linspace(0, n - 1, k)]


@dataclass
class ScoreResult:
    values: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | not_run | error
    reason: str = ""


class Scorer(abc.ABC):
    """Base: `name` is the stage name; `reads`/`writes` are the table columns used and produced."""

    name: ClassVar[str] = "scorer"
    reads: ClassVar[tuple[str, ...]] = ("path",)
    writes: ClassVar[tuple[str, ...]] = ()
    needs_motion: ClassVar[bool] = False  # reads the VMAF-motion accumulator of Clip.decode_once

    def frame_indices(self, clip: Clip) -> list[int]:
        """The RGB frames `score` will ask for, so the shared decoding pass can keep them."""
        return []

    @abc.abstractmethod
    def score(self, clip: Clip) -> ScoreResult:
        """Score one clip (each stage implements this)."""

    def __call__(self, clip: Clip) -> ScoreResult:
        try:
            return self.score(clip)
        except (VideoReadError, OSError, ValueError, RuntimeError) as exc:
            return ScoreResult({k: np.nan for k in self.writes}, "error", f"{self.name}: {exc}")


@dataclass
class DecodeCheck(Scorer):
    """Probes the file and decodes its first and last frame; anything else is meaningless if this fails."""

    name: ClassVar[str] = "decode"
    writes: ClassVar[tuple[str, ...]] = ("decoded_frames",)

    def frame_indices(self, clip: Clip) -> list[int]:
        return [0, clip.num_frames - 1]

    def score(self, clip: Clip) -> ScoreResult:
        if clip.decode_error is not None:
            raise clip.decode_error
        clip.frames([0, clip.num_frames - 1])  # from the shared pass's cache when it ran
        return ScoreResult({"decoded_frames": clip.num_frames})


@dataclass
class MotionScorer(Scorer):
    """VMAF motion, column `score_vmafmotion`: the mean over frames of what FFmpeg's `vmafmotion` filter
    computes, from the luma of the filter's single decoding pass with the filter's own integer arithmetic
    (`soraflow.components.filter.motion`; the tests check it frame by frame against the filter itself, run through
    PyAV)."""

    name: ClassVar[str] = "motion"
    writes: ClassVar[tuple[str, ...]] = ("score_vmafmotion",)
    needs_motion: ClassVar[bool] = True

    def score(self, clip: Clip) -> ScoreResult:
        if clip.motion is None:  # used on its own, outside the filter's shared pass
            clip.decode_once([], motion=True)
            if clip.decode_error is not None:
                raise clip.decode_error
        return ScoreResult({"score_vmafmotion": clip.motion.mean})


def _gray(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


@dataclass
class BlurScorer(Scorer):
    """Variance of OpenCV's Laplacian on `num_frames` uniformly spaced grey frames (`docs/curation.md`).

    `score_blur` is the median of the per-frame variances: "median < threshold" is exactly the majority vote
    "most of the frames are blurry" the spec describes, and one number per clip can be thresholded per level.
    Frames are resized so the short side is `short_side` px first, so the score does not depend on resolution.
    """

    name: ClassVar[str] = "blur"
    writes: ClassVar[tuple[str, ...]] = ("score_blur",)
    num_frames: int = 5
    short_side: int = 0  # 0 = native resolution

    def frame_indices(self, clip: Clip) -> list[int]:
        return clip.uniform_indices(self.num_frames)

    def score(self, clip: Clip) -> ScoreResult:
        cv2 = _cv2()
        frames = clip.frames(clip.uniform_indices(self.num_frames))
        variances = []
        for f in frames:
            g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            if self.short_side:
                h, w = g.shape
                s = self.short_side / min(h, w)
                g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            variances.append(float(cv2.Laplacian(g, cv2.CV_64F).var()))
        return ScoreResult({"score_blur": float(np.median(variances))})


@dataclass
class JitterScorer(Scorer):
    """Camera jitter: the mean frame-to-frame change of the camera shift (`docs/curation.md`).

    The global camera displacement between consecutive sampled frames is estimated by phase correlation
    (`cv2.phaseCorrelate` on grey frames); `score_jitter` is the mean absolute frame-to-frame *change* of that
    displacement, in percent of the short side per frame. A steady pan moves every frame by the same amount
    and scores ~0; a shaking camera scores high; speed itself is the motion stage's business.
    `score_content` is PySceneDetect ContentDetector's raw content value (mean |ΔH|,|ΔS|,|ΔV| of consecutive
    frames, 0–255), kept for reference: it rises with any motion, so it is not thresholded by default.
    Frames are sampled at a stride so that at most `max_frames` are decoded."""

    name: ClassVar[str] = "jitter"
    writes: ClassVar[tuple[str, ...]] = ("score_jitter", "score_content")
    max_frames: int = 33
    short_side: int = 128

    def frame_indices(self, clip: Clip) -> list[int]:
        n = clip.num_frames
        if n < 3:
            return []
        return list(range(0, n, max(1, math.ceil((n - 1) / (self.max_frames - 1)))))

    def score(self, clip: Clip) -> ScoreResult:
        cv2 = _cv2()
        idx = self.frame_indices(clip)
        if not idx:
            return ScoreResult({"score_jitter": 0.0, "score_content": 0.0})
        frames = clip.frames(idx)
        h, w = frames.shape[1:3]
        s = min(1.0, self.short_side / min(h, w)) if self.short_side else 1.0
        size = (max(8, round(w * s)), max(8, round(h * s)))
        small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) if s < 1 else f for f in frames]
        # float32: half the time of float64 in phaseCorrelate, shifts equal to ~1e-7 px
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in small]
        hsv = [cv2.cvtColor(f, cv2.COLOR_RGB2HSV).astype(np.float32) for f in small]
        win = cv2.createHanningWindow((size[0], size[1]), cv2.CV_32F)
        shifts = np.array([cv2.phaseCorrelate(grey[i], grey[i + 1], win)[0] for i in range(len(grey) - 1)])
        accel = np.linalg.norm(np.diff(shifts, axis=0), axis=1) if len(shifts) > 1 else np.zeros(1)
        jitter = float(np.mean(accel)) / min(size) * 100.0
        content = float(np.mean([np.mean(np.abs(hsv[i + 1] - hsv[i])) for i in range(len(hsv) - 1)]))
        return ScoreResult({"score_jitter": jitter, "score_content": content})


def _phash(frame: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash): 32×32 grey, top-left 8×8 DCT block against its median."""
    cv2 = _cv2()
    g = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    d = cv2.dct(g.astype(np.float32))[:8, :8].flatten()
    bits = d > np.median(d[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: str, b: str) -> int:
    return sum(bin(int(x, 16) ^ int(y, 16)).count("1") for x, y in zip(a.split("-"), b.split("-")))


@dataclass
class PerceptualHasher(Scorer):
    """pHash of `num_frames` uniformly spaced frames, joined as hex (`phash`); `find_duplicates` compares."""

    name: ClassVar[str] = "dedup"
    writes: ClassVar[tuple[str, ...]] = ("phash",)
    num_frames: int = 3

    def frame_indices(self, clip: Clip) -> list[int]:
        return clip.uniform_indices(self.num_frames)

    def score(self, clip: Clip) -> ScoreResult:
        idx = clip.uniform_indices(self.num_frames)
        while len(idx) < self.num_frames:  # very short clips: repeat the last frame so hashes stay comparable
            idx.append(idx[-1])
        hashes = [f"{_phash(f):016x}" for f in clip.frames(idx)]
        return ScoreResult({"phash": "-".join(hashes)})


def find_duplicates(paths: list[str], hashes: list[str | None], max_hamming: int = 8) -> list[str | None]:
    """`dup_of` per row: the path of the first earlier row whose hash is within `max_hamming` bits (summed over
    the sampled frames), else None. The first of a group is kept; later near-copies point at it."""
    out: list[str | None] = [None] * len(paths)
    keepers: list[tuple[str, str]] = []
    for i, (p, h) in enumerate(zip(paths, hashes)):
        if not h or not isinstance(h, str):
            continue
        for kp, kh in keepers:
            if len(kh) == len(h) and hamming(kh, h) <= max_hamming:
                out[i] = kp
                break
        else:
            keepers.append((p, h))
    return out


@dataclass
class AestheticScorer(Scorer):
    """LAION "improved aesthetic predictor" (CLIP ViT-L/14 image embedding → MLP), mean over the first,
    middle and last frame, column `score_aesthetic` (`docs/curation.md`). Runs only with a local `weights_path`:
    a folder with `clip/` (a transformers CLIP model) and `mlp.pth` (the predictor's state dict), or any
    `model_factory(weights_path) -> callable(frames uint8 [N,H,W,3]) -> scores [N]`. Without weights the
    stage records `not_run` and the reason; it never invents a score."""

    name: ClassVar[str] = "aesthetic"
    writes: ClassVar[tuple[str, ...]] = ("score_aesthetic",)
    weights_path: str | None = None
    model_factory: Callable[[str], Callable[[np.ndarray], np.ndarray]] | None = None
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def availability(self) -> str | None:
        if not self.weights_path:
            return "no aesthetic weights path given"
        if not os.path.exists(self.weights_path):
            return f"aesthetic weights path {self.weights_path} does not exist"
        return None

    def _load(self):
        if self._model is None:
            factory = self.model_factory or _laion_aesthetic_factory
            self._model = factory(self.weights_path)
        return self._model

    def frame_indices(self, clip: Clip) -> list[int]:
        n = clip.num_frames
        return [] if self.availability() else sorted({0, n // 2, n - 1})

    def score(self, clip: Clip) -> ScoreResult:
        why = self.availability()
        if why:
            return ScoreResult({"score_aesthetic": np.nan}, "not_run", why)
        n = clip.num_frames
        frames = clip.frames(sorted({0, n // 2, n - 1}))
        scores = np.asarray(self._load()(frames), dtype=np.float64).reshape(-1)
        return ScoreResult({"score_aesthetic": float(scores.mean())})


def _laion_aesthetic_factory(weights_path: str):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    root = Path(weights_path)
    clip = CLIPModel.from_pretrained(root / "clip").eval()
    proc = CLIPImageProcessor.from_pretrained(root / "clip")
    dim = clip.config.projection_dim
    mlp = torch.nn.Sequential(
        torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    )
    state = torch.load(root / "mlp.pth", map_location="cpu")
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    mlp.load_state_dict(state)
    mlp.eval()

    @torch.no_grad()
    def predict(frames: np.ndarray) -> np.ndarray:
        inputs = proc(images=list(frames), return_tensors="pt")
        emb = clip.get_image_features(**inputs)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return mlp(emb).squeeze(-1).numpy()

    return predict


@dataclass
class OCRScorer(Scorer):
    """Text area: boxes with confidence > `min_confidence` (0.7, the paper's value), total box area / frame
    area, max over the sampled frames, column `score_ocr` (`docs/curation.md`). Runs only with a local `weights_path`
    (PaddleOCR model folder) or a `detector_factory(weights_path) -> callable(frame) -> [(box_xyxy, conf)]`;
    otherwise `not_run` with the reason."""

    name: ClassVar[str] = "ocr"
    writes: ClassVar[tuple[str, ...]] = ("score_ocr",)
    weights_path: str | None = None
    detector_factory: Callable[[str], Callable[[np.ndarray], list]] | None = None
    min_confidence: float = 0.7
    num_frames: int = 3
    _detector: Any = field(default=None, init=False, repr=False, compare=False)

    def availability(self) -> str | None:
        if not self.weights_path:
            return "no OCR weights path given"
        if not os.path.exists(self.weights_path):
            return f"OCR weights path {self.weights_path} does not exist"
        if self.detector_factory is None:
            try:
                import paddleocr  # noqa: F401
            except ImportError:
                return "paddleocr is not installed (pass detector_factory or install paddleocr)"
        return None

    def _load(self):
        if self._detector is None:
            self._detector = (self.detector_factory or _paddle_factory)(self.weights_path)
        return self._detector

    def frame_indices(self, clip: Clip) -> list[int]:
        return [] if self.availability() else clip.uniform_indices(self.num_frames)

    def score(self, clip: Clip) -> ScoreResult:
        why = self.availability()
        if why:
            return ScoreResult({"score_ocr": np.nan}, "not_run", why)
        det = self._load()
        best = 0.0
        for f in clip.frames(clip.uniform_indices(self.num_frames)):
            h, w = f.shape[:2]
            area = sum(max(0.0, (x1 - x0)) * max(0.0, (y1 - y0))
                       for (x0, y0, x1, y1), conf in det(f) if conf > self.min_confidence)
            best = max(best, min(1.0, area / float(h * w)))
        return ScoreResult({"score_ocr": best})


def _paddle_factory(weights_path: str):  # pragma: no cover - needs paddleocr + weights
    from paddleocr import PaddleOCR

    ocr = PaddleOCR(det_model_dir=weights_path, rec=False, use_angle_cls=False, show_log=False)

    def detect(frame: np.ndarray):
        out = []
        for line in (ocr.ocr(frame[..., ::-1], rec=False, cls=False) or [[]])[0] or []:
            pts = np.asarray(line[0] if isinstance(line[0], (list, tuple)) and len(line) == 2 else line)
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            conf = float(line[1]) if len(line) == 2 and np.isscalar(line[1]) else 1.0
            out.append(((x0, y0, x1, y1), conf))
        return out

    return detect


def default_scorers(aesthetic_weights: str | None = None, ocr_weights: str | None = None) -> list[Scorer]:
    """The filter's scorers in stage order (decode first: nothing else means anything if it fails)."""
    return [DecodeCheck(), PerceptualHasher(), BlurScorer(), MotionScorer(), JitterScorer(),
            AestheticScorer(weights_path=aesthetic_weights), OCRScorer(weights_path=ocr_weights)]
