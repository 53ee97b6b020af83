"""Rectified-flow objective, timestep sampling and the resolution/length shift
(docs/models.md#flow-matching-objective, #timesteps-and-shift).

Conventions (the released code's, not the paper text's):

* ``x0`` is the clean (scaled) latent, ``noise`` is x1 ~ N(0, I), ``t`` in [0, 1] with **t = 1 pure noise**.
* ``x_t = (1 - t)·x0 + (t + σ_min·(1 - t))·noise`` with σ_min = 1e-5.
* The regression target is ``v = (1 - σ_min)·noise - x0`` (= dx_t/dt, "noise minus data"); the sampler
  integrates from t = 1 down to t = 0 with ``x <- x + (t_next - t_cur)·v``.
* The shift ``t <- α·t / (1 + (α - 1)·t)`` with
  ``α = [1 + (N_hw - 256)·(3 - 1)/(4096 - 256)]·sqrt(T_lat)``, N_hw = image tokens per latent frame.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SIGMA_MIN = 1e-5

# Linear map tokens-per-frame -> spatial shift, through (256, 1) and (4096, 3) (`get_res_lin_function`).
SHIFT_BASE_TOKENS = 256
SHIFT_MAX_TOKENS = 4096
SHIFT_BASE = 1.0
SHIFT_MAX = 3.0

# Training always divides latent H·W by this, whatever the patch size (docs/models.md#timesteps-and-shift).
TRAIN_TOKEN_DIVISOR = 4


# ---------------------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------------------


def _broadcast_t(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-sample t [B] (or a scalar) -> shape [B, 1, 1, ...] broadcastable against ``like``."""
    t = torch.as_tensor(t, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or [B={like.shape[0]}], got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latent(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float, sigma_min: float = SIGMA_MIN
) -> torch.Tensor:
    """x_t = (1 - t)·x0 + (t + σ_min·(1 - t))·noise; ``t`` is a scalar or one value per sample [B].

    Computed in the promoted dtype of (x0, noise, t): bf16 inputs give a bf16 x_t, as in the released
    training loop (t is cast to bf16 before this, see ``sample_train_timesteps``).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    tb = _broadcast_t(t, x0)
    return (1 - tb) * x0 + (tb + sigma_min * (1 - tb)) * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """v = (1 - σ_min)·noise - x0 = d x_t / dt (the code's sign: noise minus data,
    docs/models.md#flow-matching-objective)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    return (1 - sigma_min) * noise - x0


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain MSE, mean over every element, computed in fp32 (docs/models.md#flow-matching-objective)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def draw_train_noise(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Training noise x1: drawn in fp32, then cast to the training dtype (bf16),
    docs/models.md#flow-matching-objective."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Shift
# ---------------------------------------------------------------------------------------------------------


def resolution_shift_alpha(tokens_per_frame: float, latent_frames: int) -> float:
    """α = [1 + (N_hw - 256)·(3 - 1)/(4096 - 256)]·sqrt(T_lat) (docs/models.md#timesteps-and-shift).

    ``tokens_per_frame`` = N_hw, the image tokens of one latent frame after patchify; ``latent_frames`` =
    T_lat (1 for images).
    """
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    slope = (SHIFT_MAX - SHIFT_BASE) / (SHIFT_MAX_TOKENS - SHIFT_BASE_TOKENS)
    spatial = SHIFT_BASE + (tokens_per_frame - SHIFT_BASE_TOKENS) * slope
    return spatial * math.sqrt(latent_frames)


def _latent_thw(latent_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(latent_shape) == 5:
        _, _, t, h, w = latent_shape
    elif len(latent_shape) == 3:
        t, h, w = latent_shape
    else:
        raise ValueError(f"expected a latent shape (B, C, T, H, W) or (T, H, W), got {tuple(latent_shape)}")
    return int(t), int(h), int(w)


def inference_tokens_per_frame(latent_shape: Sequence[int], patch_size: int) -> int:
    """N_hw at inference: (H·W) // p² — the real packed tokens per latent frame (`get_schedule`)."""
    _, h, w = _latent_thw(latent_shape)
    return (h * w) // (patch_size * patch_size)


def train_tokens_per_frame(latent_shape: Sequence[int]) -> int:
    """N_hw in training: (H·W) // 4 **regardless of the patch size** (the released train script).

    For the HunyuanVideo VAE (patch 2) this equals the inference value; for the Video DC-AE (patch 1) it is
    4× smaller, so upstream trains and samples with different α (768px 128f: 5.33 vs 6.60). It looks unintended
    upstream (docs/models.md#timesteps-and-shift). Kept to document and test that mismatch: soraflow's trainer uses
    ``inference_shift_alpha`` (the same patch-aware α the sampler uses) for every stage.
    """
    _, h, w = _latent_thw(latent_shape)
    return (h * w) // TRAIN_TOKEN_DIVISOR


def inference_shift_alpha(latent_shape: Sequence[int], patch_size: int) -> float:
    """α used by the sampler for a latent of shape (B, C, T, H, W) (or (T, H, W))."""
    t, _, _ = _latent_thw(latent_shape)
    return resolution_shift_alpha(inference_tokens_per_frame(latent_shape, patch_size), t)


def train_shift_alpha(latent_shape: Sequence[int]) -> float:
    """α used in training for a latent of shape (B, C, T, H, W): tokens = (H·W)//4 (see
    ``train_tokens_per_frame`` for why this disagrees with ``inference_shift_alpha`` for DC-AE)."""
    t, _, _ = _latent_thw(latent_shape)
    return resolution_shift_alpha(train_tokens_per_frame(latent_shape), t)


def shift_timesteps(t: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """t <- α·t / (1 + (α - 1)·t). Fixes 0 and 1, monotone increasing for α > 0; α > 1 pushes t toward 1
    (more noise)."""
    return alpha * t / (1 + (alpha - 1) * t)


def sample_train_timesteps(
    batch: int,
    alpha: float,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """One training t per sample: logit-normal, shifted, then cast to the training dtype.

    1. n ~ N(0, 1) in fp32; 2. t = sigmoid(n); 3. t <- shift(t, α) in fp32;
    4. **explicit cast to ``dtype`` (bf16 by default)**. The released code casts the shifted t to bf16 before
       building x_t and before the timestep embedding (docs/models.md#timesteps-and-shift, #mmdit-blocks), so t takes
       only bf16-representable
       values; pass ``dtype=torch.float32`` to skip the rounding.
    """
    n = torch.randn(batch, generator=generator, device=device, dtype=torch.float32)
    t = torch.sigmoid(n)
    t = shift_timesteps(t, alpha)
    return t.to(dtype)


def inference_timesteps(steps: int, alpha: float | None) -> list[float]:
    """linspace(1, 0, steps + 1) in fp32, shifted with α (no shift when α is None); returned as Python floats,
    like the released `get_schedule(...).tolist()`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float32)
    if alpha is not None:
        t = shift_timesteps(t, alpha)
    return t.tolist()
