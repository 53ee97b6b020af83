"""The one attention function every MMDiT block calls (docs/models.md#mmdit-attention-kernels).

FlashAttention-3 (`flash_attn_interface`) or FlashAttention-2 (`flash_attn`) when importable and the inputs are
on a CUDA device in half precision; otherwise torch SDPA, which on Hopper picks the cuDNN or flash kernels.
Full bidirectional attention, no mask, softmax scale 1/sqrt(head_dim).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F


def _import_flash():
    for name in ("flash_attn_interface", "flash_attn"):
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            continue
        fn = getattr(mod, "flash_attn_func", None)
        if fn is not None:
            return name, fn
    return None, None


# Probed once at import: which FlashAttention package (if any) this process can use.
FLASH_BACKEND, _flash_attn_func = _import_flash()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, L, D] -> [B, L, H*D]."""
    b, h, l, d = q.shape
    if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if isinstance(out, tuple):  # some FA3 builds return (out, lse)
            out = out[0]
        return out.reshape(b, l, h * d)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, l, h * d)
