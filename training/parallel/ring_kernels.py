"""Per-block attention kernels for ring attention, and the block merge, without any process group
(docs/architecture.md#sequence-parallelism).

Ring attention computes a query chunk's attention over K/V blocks one at a time and merges the partial results.
Each block kernel here returns, besides the block output, the row log-sum-exp (LSE) of the scaled scores, so
blocks merge exactly in fp32:

    lse = logaddexp(lse_a, lse_b),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse).

Backward: softmax attention's gradient only needs, per query row, the *global* LSE (to rebuild the global
probabilities P = exp(S - lse)) and the global output O (for D = rowsum(dO * O)). A fused backward kernel fed
one K/V block together with the global O and LSE therefore returns exactly that block's share: its dK, dV and
its additive contribution to dQ. Summing over blocks gives the full-attention gradient, with no L x L matrix.

Kernels (`select_kernel`):
* "flash"     CUDA, fp16/bf16: `aten._scaled_dot_product_flash_attention` (+ `_backward`); LSE fp32 [B, H, Lq].
* "efficient" CUDA, any float dtype: `aten._scaled_dot_product_efficient_attention`; its LSE may be padded
              along Lq (older builds round to 32), so it is sliced here and re-padded for the backward.
* "cudnn"     CUDA fp16/bf16, the "auto" choice on Hopper (cuDNN >= 9, head_dim <= 128):
              `aten._scaled_dot_product_cudnn_attention` with compute_log_sumexp; its LSE is reshaped to
              [B, H, Lq] and back. Checked against SDPA on an H100 with torch 2.11 / cuDNN 9.
* "cpu-flash" CPU, fp64/fp32/bf16/fp16: `aten._scaled_dot_product_flash_attention_for_cpu`; LSE in the
              accumulation dtype (fp64 for fp64 inputs, else fp32).
* "matmul"    portable fp32 (fp64 for fp64 inputs) matmul/softmax; materialises Lq x Lk scores, so it runs only
              when asked for by name or when no fused op exists for the device/dtype (logged as a warning).

`blockwise_attention` runs the same per-block forward/backward and merge over K/V blocks held in one process
(a ring simulated sequentially): the reference for the GPU check script and for tests without a process group.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

KERNELS = ("auto", "flash", "efficient", "cudnn", "cpu-flash", "matmul")
_aten = torch.ops.aten


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Merge/accumulation dtype: fp32, or the input's own if wider (fp64 in tests)."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# kernels: forward(q, k, v, scale) -> (out, lse [B,H,Lq] in acc dtype, aux);
#          backward(dout, q, k, v, out, lse, aux, scale) -> (dq, dk, dv) for this block, out/lse being global.
# `out` handed to backward is the global output in the input dtype; `aux` is what the first block's forward
# returned for the backward (RNG state, cumulative lengths: unused without dropout or varlen, but required).


class _Matmul:
    name = "matmul"

    @staticmethod
    def forward(q, k, v, scale):
        acc = acc_dtype(q.dtype)
        s = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale
        lse = torch.logsumexp(s, dim=-1)
        return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.to(acc)), lse, None

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        acc = acc_dtype(q.dtype)
        qf, kf, vf, do = q.to(acc), k.to(acc), v.to(acc), dout.to(acc)
        delta = (do * out.to(acc)).sum(-1, keepdim=True)
        p = torch.exp(torch.matmul(qf, kf.transpose(-2, -1)) * scale - lse.to(acc).unsqueeze(-1))
        dv = torch.matmul(p.transpose(-2, -1), do)
        ds = p * (torch.matmul(do, vf.transpose(-2, -1)) - delta)
        return torch.matmul(ds, kf) * scale, torch.matmul(ds.transpose(-2, -1), qf) * scale, dv


class _CpuFlash:
    name = "cpu-flash"

    @staticmethod
    def forward(q, k, v, scale):
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return out, lse, None

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        return _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False, scale=scale
        )


class _CudaFlash:
    name = "flash"

    @staticmethod
    def forward(q, k, v, scale):
        r = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
        # r: out, lse [B,H,Lq] fp32, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, debug_mask
        return r[0], r[1], (r[2], r[3], r[6], r[7])

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        cum_q, cum_k, seed, offset = aux
        return _aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse.contiguous(), cum_q, cum_k, q.shape[2], k.shape[2], 0.0, False, seed, offset,
            scale=scale,
        )


class _CudaEfficient:
    name = "efficient"

    @staticmethod
    def forward(q, k, v, scale):
        out, lse, seed, offset = _aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
        return out, lse[..., : q.shape[2]], (lse.shape[-1], seed, offset)

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        lse_len, seed, offset = aux
        lse = F.pad(lse, (0, lse_len - lse.shape[-1])).contiguous()  # the kernel's own (padded) LSE length
        g = _aten._scaled_dot_product_efficient_attention_backward(
            dout, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False, scale=scale
        )
        return g[0], g[1], g[2]


class _CudaCudnn:
    name = "cudnn"

    @staticmethod
    def forward(q, k, v, scale):
        r = _aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
        b, h, lq = q.shape[:3]
        # r: out, lse (fp32, [B,H,Lq] or [B,H,Lq,1] depending on the build), cum_q, cum_k, max_q, max_k, seed,
        # offset, debug_mask
        return r[0], r[1].reshape(b, h, lq), (tuple(r[1].shape), r[2], r[3], r[6], r[7])

    @staticmethod
    def backward(dout, q, k, v, out, lse, aux, scale):
        shape, cum_q, cum_k, seed, offset = aux
        return _aten._scaled_dot_product_cudnn_attention_backward(
            dout, q, k, v, out, lse.reshape(shape).contiguous(), seed, offset, None, cum_q, cum_k, q.shape[2],
            k.shape[2], 0.0, False, scale=scale,
        )[:3]


_BY_NAME = {k.name: k for k in (_Matmul, _CpuFlash, _CudaFlash, _CudaEfficient, _CudaCudnn)}
_logged: set = set()


def select_kernel(device: torch.device, dtype: torch.dtype, head_dim: int, name: str = "auto"):
    """The block kernel for these inputs. "auto": cudnn (Hopper fp16/bf16), flash (other CUDA fp16/bf16),
    efficient (other CUDA floats), cpu-flash (CPU); matmul only by name or, with a warning, where none of those
    exists."""
    if name not in KERNELS:
        raise ValueError(f"unknown ring attention kernel {name!r}; choose from {KERNELS}")
    dev = torch.device(device).type
    if name == "auto":
        if dev == "cuda":
            half = dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0
            hopper = torch.cuda.get_device_capability(device)[0] >= 9
            if half and hopper and head_dim <= 128 and (torch.backends.cudnn.version() or 0) >= 90000:
                # On H100 cuDNN's kernels are ~1.7x FA2's (benchmarks/check_sequence_parallel_gpu.py), as for SDPA.
                name = "cudnn"
            elif half and head_dim <= 256 and getattr(torch.backends.cuda, "is_flash_attention_available", bool)():
                name = "flash"
            else:
                name = "efficient"
        elif dev == "cpu" and hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):
            name = "cpu-flash"
        else:
            name = "matmul"
            key = ("fallback", dev, dtype)
            if key not in _logged:
                _logged.add(key)
                log.warning("ring attention: no fused kernel with LSE for %s/%s; using the matmul path", dev, dtype)
    kernel = _BY_NAME[name]
    key = (name, dev, dtype)
    if key not in _logged:  # once per kernel/device/dtype, so a training loop's debug log stays readable
        _logged.add(key)
        log.debug("ring attention: %s block kernel (%s, %s, head_dim %d)", name, dev, dtype, head_dim)
    return kernel


# ----------------------------------------------------------------------------------------------------------------
# merge


def new_accumulators(q: torch.Tensor):
    """Zero output and -inf LSE accumulators for q [B,H,Lq,D]. The output is laid out as [B,Lq,H,D] in memory
    (returned as its [B,H,Lq,D] view) so the final [B,Lq,H*D] reshape is free."""
    b, h, lq, d = q.shape
    acc = acc_dtype(q.dtype)
    out = torch.zeros(b, lq, h, d, dtype=acc, device=q.device).transpose(1, 2)
    lse = torch.full((b, h, lq), -math.inf, dtype=acc, device=q.device)
    return out, lse


def merge_(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """In place: (out, lse) <- the attention over the union of both key sets (LSE rescaling in acc dtype)."""
    lse_b = lse_b.to(lse.dtype)
    new = torch.logaddexp(lse, lse_b)
    # exp(-inf - new) = 0 for the first block, so the zero accumulator needs no special case.
    out.mul_(torch.exp(lse - new).unsqueeze(-1)).add_(out_b.to(out.dtype) * torch.exp(lse_b - new).unsqueeze(-1))
    lse.copy_(new)


def forward_over_blocks(q, blocks, kernel, scale):
    """(out [B,H,Lq,D] acc dtype, lse [B,H,Lq], aux) of q over K/V blocks; `blocks` yields (k, v) with only
    valid keys (a block with 0 keys is skipped). Consumed lazily, so a generator can overlap communication."""
    out, lse = new_accumulators(q)
    aux = None
    for k, v in blocks:
        if k.shape[2] == 0:
            continue
        o_b, lse_b, aux_b = kernel.forward(q, k, v, scale)
        aux = aux_b if aux is None else aux
        merge_(out, lse, o_b, lse_b)
    return out, lse, aux


# ----------------------------------------------------------------------------------------------------------------
# one process, blocks in a list (a ring simulated sequentially)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bounds, kernel):
        scale = 1.0 / math.sqrt(q.shape[-1])
        blocks = [(k[:, :, a:b], v[:, :, a:b]) for a, b in bounds]
        out, lse, aux = forward_over_blocks(q, blocks, kernel, scale)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.bounds, ctx.kernel, ctx.aux, ctx.scale = bounds, kernel, aux, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        acc = acc_dtype(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        for a, b in ctx.bounds:
            if b <= a:
                continue
            gq, gk, gv = ctx.kernel.backward(dout, q, k[:, :, a:b], v[:, :, a:b], out, lse, ctx.aux, ctx.scale)
            dq += gq
            dk[:, :, a:b] += gk
            dv[:, :, a:b] += gv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def blockwise_attention(q, k, v, n_blocks: int, kv_len: int | None = None, kernel: str = "auto") -> torch.Tensor:
    """Attention of q [B,H,Lq,D] over k, v [B,H,Lk,D] computed as `n_blocks` contiguous K/V blocks merged by LSE
    (the ring's per-block math, in one process). Keys >= kv_len are excluded by slicing the blocks. Returns
    [B,H,Lq,D]; differentiable through the per-block fused backward."""
    lk = k.shape[2]
    n = lk if kv_len is None else min(kv_len, lk)
    step = -(-lk // n_blocks)
    bounds = tuple((i * step, min((i + 1) * step, n)) for i in range(n_blocks))
    return _BlockwiseAttention.apply(q, k, v, bounds, select_kernel(q.device, q.dtype, q.shape[-1], kernel))
