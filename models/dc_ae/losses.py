"""Video DC-AE training losses as pure functions (docs/models.md#autoencoder-training; upstream
`opensora/models/vae/losses.py`).

Phase 1: nll = (|x - x̂| + w_p·P(x, x̂)) / exp(logvar) + logvar, frames flattened to (b·t), summed over all
elements and divided by b·t (logvar is a scalar that stays 0 upstream). Phase 2 adds
d · g with g = -mean(D(x̂)) and d = clamp(‖∇_last nll‖ / (‖∇_last g‖ + 1e-4), 0, 1e4) · disc_weight, the
gradients taken at the decoder's last conv weight; the discriminator minimises the hinge loss.

The perceptual network is pluggable: any callable (x, x̂) on [N, 3, H, W] frames in [-1, 1] returning a
per-frame distance broadcastable to [N, 1, 1, 1] (e.g. an LPIPS-VGG16 module).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "hinge_d_loss",
    "generator_loss",
    "adaptive_disc_weight",
    "reconstruction_nll",
    "PerceptualFn",
]

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 · (mean relu(1 - D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss -mean(D(x̂))."""
    return -logits_fake.mean()


def adaptive_disc_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    disc_weight: float = 0.05,
    eps: float = 1e-4,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """clamp(‖∂nll/∂W‖ / (‖∂g/∂W‖ + eps), 0, max_weight) · disc_weight, detached; W = `last_layer`.

    Both graphs are retained so the caller can still backpropagate nll + d·g."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d = torch.linalg.vector_norm(nll_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + eps)
    return torch.clamp(d, 0.0, max_weight).detach() * disc_weight


def reconstruction_nll(
    video: torch.Tensor,
    recon: torch.Tensor,
    perceptual_fn: PerceptualFn | None = None,
    perceptual_weight: float = 0.5,
    logvar: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Upstream VAELoss nll for [B, C, T, H, W] videos: per-pixel L1 (+ weighted per-frame perceptual
    distance broadcast over C·H·W), divided by exp(logvar) plus logvar, summed, divided by B·T."""
    if video.shape != recon.shape or video.dim() != 5:
        raise ValueError(f"expected two [B, C, T, H, W] tensors of one shape; got {tuple(video.shape)} "
                         f"and {tuple(recon.shape)}")
    b, c, t, h, w = video.shape
    x = video.transpose(1, 2).reshape(b * t, c, h, w)
    y = recon.transpose(1, 2).reshape(b * t, c, h, w)
    rec = (x - y).abs()
    if perceptual_fn is not None and perceptual_weight > 0:
        p = perceptual_fn(x, y)
        rec = rec + perceptual_weight * p.reshape(b * t, 1, 1, 1)
    logvar = torch.as_tensor(logvar, dtype=rec.dtype, device=rec.device)
    nll = rec / torch.exp(logvar) + logvar
    return nll.sum() / (b * t)
