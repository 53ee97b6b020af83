"""Patchify ("pack") latents into DiT tokens and back, and the 3D position ids of those tokens.

Token order is (t h w) — time slowest — and the features of a token are ordered (c ph pw), channel slowest
(docs/models.md#mmdit-forward-pass, step 1). Temporal patch size is always 1.
"""

from __future__ import annotations

import torch


def pack(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*(H/p)*(W/p), C*p*p]."""
    if x.ndim != 5:
        raise ValueError(f"pack expects a [B, C, T, H, W] latent, got shape {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"latent height/width ({h}, {w}) must be multiples of the patch size {p}")
    x = x.reshape(b, c, t, h // p, p, w // p, p)
    x = x.permute(0, 2, 3, 5, 1, 4, 6)  # b t h w c ph pw
    return x.reshape(b, t * (h // p) * (w // p), c * p * p)


def unpack(x: torch.Tensor, patch_size: int, t: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack`: [B, L, C*p*p] -> [B, C, t, h, w], with (t, h, w) the latent sizes."""
    b, n, d = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"latent height/width ({h}, {w}) must be multiples of the patch size {p}")
    if n != t * (h // p) * (w // p) or d % (p * p):
        raise ValueError(f"cannot unpack {tuple(x.shape)} into t={t}, h={h}, w={w} with patch {p}")
    c = d // (p * p)
    x = x.reshape(b, t, h // p, w // p, c, p, p)
    x = x.permute(0, 4, 1, 2, 5, 3, 6)  # b c t h ph w pw
    return x.reshape(b, c, t, h, w)


def image_position_ids(
    batch: int, t: int, h: int, w: int, patch_size: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """(t, h, w) integer positions of every packed token, in pack order: [B, t*(h/p)*(w/p), 3]."""
    hp, wp = h // patch_size, w // patch_size
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(t, device=device),
            torch.arange(hp, device=device),
            torch.arange(wp, device=device),
            indexing="ij",
        ),
        dim=-1,
    ).reshape(1, t * hp * wp, 3)
    return grid.expand(batch, -1, -1).to(dtype)


def text_position_ids(batch: int, length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Text tokens all sit at position (0, 0, 0) (docs/models.md#mmdit-forward-pass)."""
    return torch.zeros(batch, length, 3, device=device, dtype=dtype)
