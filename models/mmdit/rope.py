"""3D rotary position embedding over (t, h, w) (docs/models.md#mmdit-3d-rope).

Angles per axis a with dim d_a: w_j = theta^(-2j/d_a), j < d_a/2, angle = position_a * w_j; concatenated in the
order t, h, w. Two layouts pair dimensions differently:
- rotate_half (released Open-Sora weights, Liger kernel): dim j pairs with j + head_dim/2;
- interleaved (original FLUX): dim 2j pairs with 2j+1.
They give the same attention scores when q/k weight rows are permuted per head by
`rotate_half_permutation` (see models/mmdit/checkpoint.py).
"""

from __future__ import annotations

import torch


def rope_angles(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> torch.Tensor:
    """ids [B, L, n_axes] -> angles [B, L, head_dim/2] in fp32, axes in order."""
    parts = []
    for i, dim in enumerate(axes_dim):
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        omega = (1.0 / theta**exponent).to(torch.float32)
        parts.append(ids[..., i].to(torch.float32).unsqueeze(-1) * omega)
    return torch.cat(parts, dim=-1)


def rope_tables(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int, layout: str = "rotate_half"):
    """(cos, sin), each [B, 1, L, head_dim] fp32, laid out for `apply_rope` with the same layout."""
    ang = rope_angles(ids, axes_dim, theta)
    if layout == "rotate_half":
        ang = torch.cat([ang, ang], dim=-1)
    elif layout == "interleaved":
        ang = ang.repeat_interleave(2, dim=-1)
    else:
        raise ValueError(f"unknown RoPE layout {layout!r}")
    return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "rotate_half") -> torch.Tensor:
    """Rotate x [B, H, L, D] by the tables; computed in fp32, returned in x's dtype."""
    xf = x.float()
    if layout == "rotate_half":
        half = xf.shape[-1] // 2
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    else:
        pairs = xf.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).to(x.dtype)


def rotate_half_permutation(head_dim: int) -> torch.Tensor:
    """Index p such that new[j] = old[p[j]]: new[j] = old[2j], new[j + D/2] = old[2j + 1]."""
    half = head_dim // 2
    idx = torch.arange(half)
    return torch.cat([2 * idx, 2 * idx + 1])
