"""Weight-free video metrics on uint8 RGB frames [T, H, W, 3], each named for what it is.

* `temporal_flickering`: VBench's exact formula (`vbench/temporal_flickering.py`), no network.
* `static_filter_dis` / `dynamic_degree_dis`: VBench's decision rules (`vbench/cli/static_filter.py`,
  `vbench/dynamic_degree.py`) with OpenCV DIS optical flow in place of RAFT. Proxies: the thresholds were tuned
  for RAFT magnitudes.
* `motion_smoothness_linear`: VBench's drop-odd-frames protocol with linear blending in place of AMT-S.
* `subject_consistency_ssim`, `background_consistency_hist`: VBench's (prev + first)/2 formula on SSIM and on
  colour-histogram intersection in place of DINO / CLIP features. Structural, not semantic.
* `imaging_sharpness` (variance of the Laplacian) and `imaging_noise_sigma` (Immerkaer noise estimate): no-reference
  image statistics, not MUSIQ; they only move in the right direction under blur / noise.
* `psnr`, `ssim`: full-reference, for autoencoder reconstruction.
"""

from __future__ import annotations

import cv2
import numpy as np

# VBench rules (see module docstring for the source files).
STATIC_TOP_FRACTION, STATIC_THRES_PER_256, STATIC_COUNT_PER_16 = 0.02, 3.0, 2.0
DYNAMIC_TOP_FRACTION, DYNAMIC_THRES_PER_256, DYNAMIC_COUNT_PER_16, DYNAMIC_TARGET_FPS = 0.05, 6.0, 4.0, 8.0


def _check(frames: np.ndarray, min_frames: int = 2, what: str = "metric") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{what}: needs at least {min_frames} frames, got {frames.shape[0]}")
    return frames


# --- VBench-exact -------------------------------------------------------------------------------------------

def temporal_flickering(frames: np.ndarray) -> float:
    """(255 - mean over t of MAE(f_t, f_{t+1}))/255 in float32, as VBench's `cal_score`."""
    f = _check(frames, what="temporal_flickering").astype(np.float32)
    maes = [float(np.mean(np.abs(f[i] - f[i + 1]))) for i in range(len(f) - 1)]
    return (255.0 - float(np.mean(maes))) / 255.0


# --- optical-flow proxies -----------------------------------------------------------------------------------

def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def flow_magnitude(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|flow| in px from frame a to frame b (OpenCV DIS, medium preset: dense, no weights)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(_gray(a), _gray(b), None)
    return np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)


def top_mean(mag: np.ndarray, fraction: float) -> float:
    """Mean of the largest int(H·W·fraction) magnitudes (VBench's `get_score`)."""
    flat = np.sort(mag.reshape(-1))[::-1]
    k = int(flat.size * fraction)
    return float(np.mean(flat[:k])) if k > 0 else float(flat[0])


def static_filter_dis(frames: np.ndarray) -> dict:
    """VBench's static filter with DIS flow: all frames, pairs (t, t+1) plus (first, last) and (last, first);
    top 2 %; thres = 3·min(H,W)/256; count_num = round(2·N/16); static unless more than count_num of the
    consecutive pairs exceed thres or either first/last pair exceeds thres·count_num·2."""
    f = _check(frames, what="static_filter")
    thres = STATIC_THRES_PER_256 * min(f.shape[1:3]) / 256.0
    count_num = round(STATIC_COUNT_PER_16 * len(f) / 16.0)
    pairs = list(zip(f[:-1], f[1:])) + [(f[0], f[-1]), (f[-1], f[0])]
    scores = [top_mean(flow_magnitude(a, b), STATIC_TOP_FRACTION) for a, b in pairs]
    static, count = True, 0
    for s in scores[:-2]:
        count += s > thres
        if count > count_num:
            static = False
            break
    if static and any(s > thres * count_num * 2 for s in scores[-2:]):
        static = False
    return {"static": static, "scores": scores, "thres": thres, "count_num": count_num}


def dynamic_degree_dis(frames: np.ndarray, fps: float) -> dict:
    """VBench's dynamic-degree rule with DIS flow: keep every round(fps/8)-th frame; per consecutive pair the
    mean of the top 5 % magnitudes; dynamic once round(4·N/16) pairs exceed 6·min(H,W)/256 (N = kept frames)."""
    f = _check(frames, what="dynamic_degree")
    interval = max(1, round(fps / DYNAMIC_TARGET_FPS)) if fps and fps > 0 else 1
    kept = f[::interval]
    thres = DYNAMIC_THRES_PER_256 * min(f.shape[1:3]) / 256.0
    count_num = round(DYNAMIC_COUNT_PER_16 * len(kept) / 16.0)
    scores = [top_mean(flow_magnitude(a, b), DYNAMIC_TOP_FRACTION) for a, b in zip(kept[:-1], kept[1:])]
    dynamic, count = False, 0
    for s in scores:  # VBench's check_move: the count test runs after each pair, so count_num 0 means "any pair"
        count += s > thres
        if count >= count_num:
            dynamic = True
            break
    return {"dynamic": dynamic, "scores": scores, "thres": thres, "count_num": count_num, "interval": interval}


def motion_smoothness_linear(frames: np.ndarray) -> float:
    """Keep even frames, predict each odd frame as the mean of its even neighbours, score (255 - MAE)/255."""
    f = _check(frames, min_frames=3, what="motion_smoothness").astype(np.float32)
    maes = [float(np.mean(np.abs(f[i] - (f[i - 1] + f[i + 1]) / 2))) for i in range(1, len(f) - 1, 2)]
    return (255.0 - float(np.mean(maes))) / 255.0


# --- consistency proxies ------------------------------------------------------------------------------------

def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB images (scikit-image, Gaussian window as Wang et al. 2004, channel mean)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _hist(frame: np.ndarray, bins: int = 16) -> np.ndarray:
    h = cv2.calcHist([np.ascontiguousarray(frame)], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).reshape(-1)
    return h / max(h.sum(), 1.0)


def _prev_first(frames: np.ndarray, sim) -> float:
    """VBench's consistency formula: per frame t >= 1, (max(0, sim(t, t-1)) + max(0, sim(t, 0)))/2, averaged."""
    vals = [(max(0.0, sim(frames[t], frames[t - 1])) + max(0.0, sim(frames[t], frames[0]))) / 2
            for t in range(1, len(frames))]
    return float(np.mean(vals))


def subject_consistency_ssim(frames: np.ndarray) -> float:
    return _prev_first(_check(frames, what="subject_consistency"), ssim)


def background_consistency_hist(frames: np.ndarray) -> float:
    f = _check(frames, what="background_consistency")
    hists = [_hist(x) for x in f]
    idx = np.arange(len(f))
    # histogram intersection of normalised histograms: 1 for equal colour distributions, 0 for disjoint ones
    return _prev_first(idx, lambda i, j: float(np.minimum(hists[int(i)], hists[int(j)]).sum()))


# --- no-reference image statistics ---------------------------------------------------------------------------

def imaging_sharpness(frames: np.ndarray) -> float:
    """Mean over frames of the variance of the Laplacian of the grey image (higher = sharper)."""
    f = _check(frames, min_frames=1, what="imaging_sharpness")
    return float(np.mean([cv2.Laplacian(_gray(x), cv2.CV_64F).var() for x in f]))


def imaging_noise_sigma(frames: np.ndarray) -> float:
    """Mean over frames of Immerkaer's (1996) noise sigma of the grey image, in 0-255 units (lower = cleaner):
    sigma = sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|, N = [[1,-2,1],[-2,4,-2],[1,-2,1]]."""
    f = _check(frames, min_frames=1, what="imaging_noise_sigma")
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    out = []
    for x in f:
        g = _gray(x).astype(np.float64)
        h, w = g.shape
        r = cv2.filter2D(g, -1, kernel)[1:-1, 1:-1]  # valid region only
        out.append(np.sqrt(np.pi / 2) * np.abs(r).sum() / (6.0 * (w - 2) * (h - 2)))
    return float(np.mean(out))


# --- full-reference ------------------------------------------------------------------------------------------

def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """10·log10(255² / MSE) over the whole clip; inf for identical clips."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"psnr: shapes differ {ref.shape} vs {test.shape}")
    mse = float(np.mean((ref - test) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def video_ssim(ref: np.ndarray, test: np.ndarray) -> float:
    if ref.shape != test.shape:
        raise ValueError(f"ssim: shapes differ {ref.shape} vs {test.shape}")
    return float(np.mean([ssim(a, b) for a, b in zip(ref, test)]))


# Offline per-video metrics: name -> (function of (frames, fps), what it is)
def per_video_metrics(frames: np.ndarray, fps: float) -> dict:
    """Every per-video offline metric for one clip (the static / dynamic flags as 0/1 with their flow scores)."""
    static = static_filter_dis(frames)
    dyn = dynamic_degree_dis(frames, fps)
    return {
        "temporal_flickering": temporal_flickering(frames),
        "static_dis": float(static["static"]),
        "dynamic_degree_dis": float(dyn["dynamic"]),
        "motion_smoothness_linear": motion_smoothness_linear(frames) if len(frames) >= 3 else None,
        "subject_consistency_ssim": subject_consistency_ssim(frames),
        "background_consistency_hist": background_consistency_hist(frames),
        "imaging_sharpness": imaging_sharpness(frames),
        "imaging_noise_sigma": imaging_noise_sigma(frames),
    }


METRIC_INFO = {
    "temporal_flickering": ("vbench", "VBench's own definition (no network): (255 - mean MAE of consecutive "
                            "frames)/255, averaged over the videos VBench's static-filter rule keeps (that rule "
                            "runs on OpenCV DIS flow here, RAFT in VBench)"),
    "static_dis": ("proxy", "fraction of videos VBench's static-filter rule calls static, with DIS flow"),
    "dynamic_degree_dis": ("proxy", "VBench dynamic-degree rule with OpenCV DIS flow instead of RAFT"),
    "motion_smoothness_linear": ("proxy", "VBench protocol with linear frame blending instead of AMT-S"),
    "subject_consistency_ssim": ("proxy", "VBench (prev+first)/2 formula on SSIM instead of DINO features"),
    "background_consistency_hist": ("proxy", "VBench (prev+first)/2 formula on colour-histogram intersection "
                                    "instead of CLIP features"),
    "imaging_sharpness": ("image-statistic", "variance of the Laplacian (higher = sharper); not MUSIQ"),
    "imaging_noise_sigma": ("image-statistic", "Immerkaer noise sigma, 0-255 (lower = cleaner); not MUSIQ"),
}
