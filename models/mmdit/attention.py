"""The one attention function every MMDiT block calls (spec §A.6).

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


FLASH_BACKEND, _flash_attn_func = _import_flash()
# "auto" uses flash-attn when available; "sdpa" forces torch SDPA; "math" is the reference implementation.
BACKEND = "auto"


def prefer_sdpa_backend(name: str) -> None:
    """Enable one SDPA kernel family process-wide ("cudnn", "flash", "efficient", "math" or "all").

    Global flags rather than a context manager so the choice also holds inside torch.compile'd blocks.
    """
    names = ("cudnn", "flash", "efficient", "math")
    if name not in names + ("all",):
        raise ValueError(f"unknown SDPA backend {name!r}; choose from {names + ('all',)}")
    on = lambda n: name in (n, "all")  # noqa: E731
    torch.backends.cuda.enable_cudnn_sdp(on("cudnn"))
    torch.backends.cuda.enable_flash_sdp(on("flash"))
    torch.backends.cuda.enable_mem_efficient_sdp(on("efficient"))
    # math stays available as the fallback so an unsupported shape still runs.
    torch.backends.cuda.enable_math_sdp(True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, H, L, D] -> [B, L, H*D]."""
    b, h, l, d = q.shape
    if BACKEND == "auto" and _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if isinstance(out, tuple):  # some FA3 builds return (out, lse)
            out = out[0]
        return out.reshape(b, l, h * d)
    if BACKEND == "math":
        scores = (q.float() @ k.float().transpose(-2, -1)) / d**0.5
        out = (scores.softmax(-1) @ v.float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, l, h * d)
