"""Did the pipeline's models learn? The checks `make demo` prints (and fails on), and what the report draws.

* `fd_proxy`: a Fréchet distance between hand-crafted spatio-temporal features of held-out clips and of a
  model's samples. Kind `proxy`: the recipe of FVD (Gaussian fit of per-video features, Fréchet distance of the
  two Gaussians) with weight-free features instead of I3D's, so it is not comparable with FVD numbers, only
  between models scored on the same clips, prompts and seeds.
* `learning_checks`: each threshold with its value and verdict, from the eval's held-out numbers and the
  stages' held-out curves (`heldout` in each Model artifact's metrics.json).
"""

from __future__ import annotations

import numpy as np

# --- FVD-like distance on hand-crafted features ------------------------------------------------------------

FEATURE_SIZE = 64  # every video is compared at 64x64


def video_features(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> 12 numbers: per-channel mean and std (colour), mean spatial gradient magnitude and
    Laplacian energy (texture / sharpness), the share of gradient energy in the coarse scale (structure), mean
    absolute frame difference and its std over time (motion), lag-1 temporal correlation (smoothness) and
    the frame-to-first-frame difference growth (drift)."""
    import cv2

    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or len(f) < 2:
        raise ValueError(f"video_features: expected uint8 [T>=2, H, W, 3], got {f.dtype} {f.shape}")
    x = np.stack([cv2.resize(fr, (FEATURE_SIZE, FEATURE_SIZE), interpolation=cv2.INTER_AREA) for fr in f])
    x = x.astype(np.float32) / 255.0
    gray = x.mean(axis=-1)
    gx, gy = np.gradient(gray, axis=(1, 2))
    grad = np.sqrt(gx**2 + gy**2)
    lap = np.stack([cv2.Laplacian(g, cv2.CV_32F) for g in gray])
    coarse = np.stack([cv2.resize(cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA), (FEATURE_SIZE,) * 2,
                                  interpolation=cv2.INTER_LINEAR) for g in gray])
    cgx, cgy = np.gradient(coarse, axis=(1, 2))
    coarse_share = float(np.mean(cgx**2 + cgy**2) / (np.mean(gx**2 + gy**2) + 1e-8))
    diff = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
    a, b = gray[:-1].reshape(len(gray) - 1, -1), gray[1:].reshape(len(gray) - 1, -1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    corr = float(np.mean((a * b).sum(1) / (np.sqrt((a**2).sum(1) * (b**2).sum(1)) + 1e-8)))
    drift = float(np.abs(x[-1] - x[0]).mean() - np.abs(x[1] - x[0]).mean())
    return np.array([*x.mean(axis=(0, 1, 2)), *x.std(axis=(0, 1, 2)), grad.mean(), np.abs(lap).mean(),
                     coarse_share, diff.mean(), diff.std(), corr, drift], dtype=np.float64)[:12]


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two Gaussian fits [N, D] (covariances get eps I,
    since a handful of videos cannot fill a D-dimensional covariance)."""
    from scipy import linalg

    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: need two [N>=2, D] sets of one D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.cov(a, rowvar=False) + eps * np.eye(a.shape[1])
    s_b = np.cov(b, rowvar=False) + eps * np.eye(a.shape[1])
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    covmean = covmean.real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2.0 * covmean))


def feature_scale(reference: np.ndarray) -> np.ndarray:
    """Per-feature std of the reference set: features are divided by it so no unit dominates the distance."""
    return np.maximum(np.std(reference, axis=0), 1e-3)


def fd_proxy(reference_feats: np.ndarray, sample_feats: np.ndarray) -> float:
    scale = feature_scale(reference_feats)
    return frechet_distance(reference_feats / scale, sample_feats / scale)


def reference_windows(frames: np.ndarray, num_frames: int, windows: int = 3) -> list[np.ndarray]:
    """Up to `windows` evenly spaced, non-identical windows of `num_frames` frames from one reference clip."""
    n = len(frames)
    if n < num_frames:
        return []
    starts = sorted(set(np.linspace(0, n - num_frames, windows).round().astype(int).tolist()))
    return [frames[s:s + num_frames] for s in starts]


# --- the checks -----------------------------------------------------------------------------------------------

AE_PSNR_MIN = {"hunyuan_vae": 22.0, "dcae": 18.0}
DCAE_GAIN_MIN_DB = 6.0
# "Clearly below": a stage that starts from a (re-)initialised network (stage 1, distill) ends at most at 90 % of
# its starting held-out loss; one that continues a trained network (stages 2, 3) at most at 97 % of where it
# started, and at most at 80 % of the chain's random initialisation.
DIT_DROP = 0.9
DIT_DROP_CONTINUED = 0.97
CHAIN_DROP = 0.8
HANDOFF_RTOL = 1e-3


# Two sorts of check. A gate compares a trained model with the same network at initialisation (or checks a
# hand-off): `soraflow run` exits non-zero when one fails. A target is an absolute quality bar (the issue's
# PSNR numbers): printed with its verdict, reported, not a failure of the run.
GATE, TARGET = "gate", "target"


def _check(name: str, value, threshold: str, passed: bool, kind: str, note: str = "", role: str = GATE) -> dict:
    return {"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "kind": kind,
            "note": note, "role": role}


def _heldout_curve(stage_metrics: dict | None) -> list[dict]:
    return (stage_metrics or {}).get("heldout") or []


def _fm(ev: dict) -> float | None:
    return ev.get("fm_loss_mean")


def learning_checks(*, ae: dict, stages: dict[str, dict | None], fd: dict, handoff_weights: dict | None = None,
                    dit_drop: float = DIT_DROP, chain_drop: float = CHAIN_DROP,
                    dit_drop_continued: float = DIT_DROP_CONTINUED,
                    ae_psnr_min: dict | None = None, dcae_gain_min_db: float = DCAE_GAIN_MIN_DB) -> list[dict]:
    """`ae`: {"hunyuan_vae": {"trained": psnr, "init": psnr}, "dcae": {...}} (eval-time held-out PSNRs);
    `stages`: stage -> its metrics.json (with the `heldout` curve); `fd`: {"stage3": {"trained": d, "init": d},
    "distilled": {...}}; `handoff_weights`: {"equal": bool, "n_tensors": int} for distill's start vs stage 3."""
    mins = {**AE_PSNR_MIN, **(ae_psnr_min or {})}
    out = []
    for name in ("hunyuan_vae", "dcae"):
        v = ae.get(name) or {}
        trained, init = v.get("trained"), v.get("init")
        out.append(_check(f"{name}.heldout_psnr", trained, f">= {mins[name]:g} dB",
                          trained is not None and trained >= mins[name], "reference",
                          "held-out clips through the trained autoencoder", role=TARGET))
        if name == "dcae":
            gain = None if trained is None or init is None else trained - init
            out.append(_check("dcae.heldout_psnr_gain", gain, f">= {dcae_gain_min_db:g} dB over its init "
                              f"({init:.2f} dB)" if init is not None else f">= {dcae_gain_min_db:g} dB over init",
                              gain is not None and gain >= dcae_gain_min_db, "reference", role=TARGET))
        out.append(_check(f"{name}.beats_init", trained, f"> init ({init:.2f} dB)" if init is not None else
                          "> init (no init weights were exported)",
                          trained is not None and init is not None and trained > init, "reference"))
    chain_init = None
    prev_end = None
    for stage in ("dit_stage1", "dit_stage2", "dit_stage3", "distill"):
        curve = _heldout_curve(stages.get(stage))
        if not curve or _fm(curve[0]) is None:
            out.append(_check(f"{stage}.heldout_fm_loss", None, "a held-out curve", False, "held-out",
                              "the stage recorded no held-out evaluation"))
            prev_end = None
            continue
        start, end = _fm(curve[0]), _fm(curve[-1])
        if stage == "dit_stage1":
            chain_init = start
        drop = dit_drop_continued if stage in ("dit_stage2", "dit_stage3") else dit_drop
        out.append(_check(f"{stage}.heldout_fm_loss", end, f"<= {drop:g} x its start ({start:.4g})",
                          end <= drop * start, "held-out",
                          f"fixed t grid and noise; steps {curve[0]['step']}..{curve[-1]['step']}"))
        if stage in ("dit_stage2", "dit_stage3") and chain_init is not None:
            out.append(_check(f"{stage}.vs_random_init", end, f"<= {chain_drop:g} x the random init "
                              f"({chain_init:.4f})", end <= chain_drop * chain_init, "held-out"))
        if stage in ("dit_stage2", "dit_stage3"):
            ok = prev_end is not None and abs(start - prev_end) <= HANDOFF_RTOL * abs(prev_end)
            out.append(_check(f"{stage}.handoff", start, f"= the previous stage's end ({prev_end:.6f}) "
                              f"within {HANDOFF_RTOL:g}" if prev_end is not None else "= the previous end",
                              ok, "held-out", "same clips, autoencoder, timesteps and noise"))
        prev_end = end
    if handoff_weights is not None:
        out.append(_check("distill.handoff", handoff_weights.get("n_tensors"),
                          "every tensor not re-initialised equals stage 3's", handoff_weights.get("equal", False),
                          "weights", "distill runs on another autoencoder's latents, so its losses are on "
                                     "another scale: the hand-off is checked on the weights"))
    for model in ("stage3", "distilled"):
        v = fd.get(model) or {}
        trained, init = v.get("trained"), v.get("init")
        out.append(_check(f"{model}.fd_proxy", trained, f"< the same network at init ({init:.3f})"
                          if init is not None else "< init", trained is not None and init is not None
                          and trained < init, "proxy", "Fréchet distance of hand-crafted video features to the "
                                                       "held-out clips, same prompts and seeds"))
    return out


def format_checks(checks: list[dict]) -> str:
    """The table `soraflow run` prints at the end."""
    def fmt(v):
        return "null" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    width = max(len(c["check"]) for c in checks) if checks else 10
    lines = [f"{'check':<{width}}  {'value':>10}  {'kind':<9}  {'role':<6}  verdict  threshold"]
    for c in checks:
        lines.append(f"{c['check']:<{width}}  {fmt(c['value']):>10}  {c['kind']:<9}  {c.get('role', GATE):<6}  "
                     f"{'PASS' if c['passed'] else 'FAIL':<7}  {c['threshold']}")
    return "\n".join(lines)


def gates_passed(checks: list[dict]) -> bool:
    """Every gate (trained vs init, hand-offs) passed; targets do not count."""
    return all(c["passed"] for c in checks if c.get("role", GATE) == GATE)
