"""Sequence (context) parallelism primitives: split/gather with SP gradient scaling and the two distributed
attentions (docs/architecture.md, "Sequence parallelism"). How the MMDiT uses them (sharding its joint
[text; image] sequence, padding, the text/image boundary) is `training/parallel/mmdit.py`.

Gradient convention (the one of ColossalAI's split/gather functions, which Open-Sora uses): every rank computes
the same loss from the full output; `gather_from_sp` backward keeps the local chunk of the gradient scaled by sp,
`split_for_sp` backward all-gathers and scales by 1/sp. Per-rank parameter gradients are then partial, and their
**mean over the SP group equals the single-process gradient** - which is what a mean all-reduce over the world
(DDP / FSDP / ZeRO with the SP ranks treated as data-parallel ranks holding the same batch) computes anyway.

Attention modes:
* "ulysses": one all-to-all turns q, k, v [B, H, L/sp, D] into [B, H/sp, L, D]; the ordinary attention kernel
  (`soraflow.models.mmdit.attention.attention`) runs on the full length over a head slice; one all-to-all turns it back.
  Needs num_heads % sp == 0.
* "ring": K/V blocks travel around the ring (isend/irecv, the next block in flight while the current one is
  computed); each block runs a fused attention kernel that returns the log-sum-exp (flash on CUDA bf16/fp16,
  memory-efficient on other CUDA dtypes, the CPU flash kernel on CPU; `ring_kernels.py`), and block outputs
  are merged with LSE rescaling in fp32. The backward is a custom autograd.Function that feeds each K/V block,
  with the *global* output and LSE, to the matching fused backward kernel (which then yields exactly that
  block's dQ share and dK/dV) and sends fp32 dK/dV accumulators around the ring along with K/V. Pad keys are
  dropped by slicing each block to its valid keys. The old fp32 matmul/softmax kernel remains as "matmul", run
  only when asked for or where no fused kernel exists (logged).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from soraflow.models.mmdit import attention as attn_mod
from soraflow.training.parallel import ring_kernels as rk

MODES = ("ulysses", "ring")


def _size(group) -> int:
    return dist.get_world_size(group)


def _rank(group) -> int:
    return dist.get_rank(group)


# ----------------------------------------------------------------------------------------------------------------
# split / gather / all-to-all autograd functions


class _SplitForSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        sp = _size(group)
        if x.shape[dim] % sp:
            raise ValueError(f"split_for_sp: size {x.shape[dim]} of dim {dim} is not divisible by sp={sp}")
        ctx.group, ctx.dim = group, dim
        return x.chunk(sp, dim)[_rank(group)].contiguous()

    @staticmethod
    def backward(ctx, grad):
        sp = _size(ctx.group)
        parts = [torch.empty_like(grad) for _ in range(sp)]
        dist.all_gather(parts, grad.contiguous(), group=ctx.group)
        return torch.cat(parts, ctx.dim) / sp, None, None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        sp = _size(group)
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(sp)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad):
        sp = _size(ctx.group)
        return grad.chunk(sp, ctx.dim)[_rank(ctx.group)] * sp, None, None


def split_for_sp(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous 1/sp chunk of `x` (same on every rank) along `dim`.

    Backward: all-gather of the chunk gradients, scaled by 1/sp (ColossalAI grad_scale="down")."""
    if _size(group) == 1:
        return x
    return _SplitForSP.apply(x, group, dim)


def gather_from_sp(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """Concatenation of every rank's equal-size chunk along `dim`.

    Backward: this rank's chunk of the gradient scaled by sp (ColossalAI grad_scale="up"). Assumes every rank
    differentiates the same loss of the gathered tensor (then this equals a reduce-scatter of the gradients)."""
    if _size(group) == 1:
        return x
    return _GatherFromSP.apply(x, group, dim)


class _AllToAll(torch.autograd.Function):
    """x [sp, ...]: slice j goes to rank j; out [sp, ...]: slice i came from rank i. Its own adjoint."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


# ----------------------------------------------------------------------------------------------------------------
# Ulysses


@torch.compiler.disable  # collectives inside: under compiled blocks, run eagerly behind a graph break
def ulysses_attention(q, k, v, group=None, kv_len: int | None = None, attn_fn=None) -> torch.Tensor:
    """Sequence-sharded attention by head all-to-all.

    q, k, v: [B, H, L/sp, D], this rank's contiguous chunk of the global sequence. Returns [B, L/sp, H*D] (the
    contract of `soraflow.models.mmdit.attention.attention`). Keys at global positions >= kv_len (padding at the end of
    the global sequence) are ignored. `attn_fn` is the local kernel (default `attention.attention`).
    """
    attn_fn = attn_mod.attention if attn_fn is None else attn_fn
    sp = _size(group)
    b, h, lc, d = q.shape
    if h % sp:
        raise ValueError(f"Ulysses sequence parallelism needs num_heads ({h}) divisible by the SP size ({sp})")
    if sp == 1:
        n = lc if kv_len is None else kv_len
        return attn_fn(q, k[:, :, :n], v[:, :, :n])
    hs = h // sp
    # One all-to-all for q, k and v: [3, B, H, Lc, D] -> [sp (head group), 3, B, Hs, Lc, D].
    x = torch.stack((q, k, v)).view(3, b, sp, hs, lc, d).permute(2, 0, 1, 3, 4, 5)
    x = _AllToAll.apply(x, group)  # [sp (sequence chunk), 3, B, Hs, Lc, D]
    x = x.permute(1, 2, 3, 0, 4, 5).reshape(3, b, hs, sp * lc, d)
    qf, kf, vf = x.unbind(0)
    if kv_len is not None:
        kf, vf = kf[:, :, :kv_len], vf[:, :, :kv_len]
    o = attn_fn(qf, kf, vf)  # [B, L, Hs*D]
    o = o.view(b, sp, lc, hs, d).permute(1, 0, 3, 2, 4)  # [sp (sequence chunk), B, Hs, Lc, D]
    o = _AllToAll.apply(o, group)  # [sp (head group), B, Hs, Lc, D]
    return o.permute(1, 3, 0, 2, 4).reshape(b, lc, h * d)


# ----------------------------------------------------------------------------------------------------------------
# Ring


def _ring_exchange(t: torch.Tensor, group, tag: int = 0):
    """Start sending `t` to the next rank of the ring and receiving the previous rank's; returns (buf, reqs).
    K/V and dK/dV messages are in flight together in the backward: distinct tags keep them apart."""
    sp, r = _size(group), _rank(group)
    send = t.contiguous()
    recv = torch.empty_like(send)
    nxt = dist.get_global_rank(group, (r + 1) % sp) if group is not None else (r + 1) % sp
    prv = dist.get_global_rank(group, (r - 1) % sp) if group is not None else (r - 1) % sp
    ops = [dist.P2POp(dist.isend, send, nxt, group, tag), dist.P2POp(dist.irecv, recv, prv, group, tag)]
    return recv, dist.batch_isend_irecv(ops)


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


def _block_valid(kv_len: int | None, src: int, chunk: int) -> int:
    """Number of real keys in the chunk that rank `src` owns."""
    if kv_len is None:
        return chunk
    return max(0, min(chunk, kv_len - src * chunk))


def _ring_blocks(kv: torch.Tensor, group, kv_len: int | None):
    """Yield this rank's view of every K/V block in ring order, sliced to its valid keys, while the next block
    is already in flight (the consumer's compute on the current block overlaps the transfer)."""
    sp, rank = _size(group), _rank(group)
    lc = kv.shape[3]
    for step in range(sp):
        if step + 1 < sp:
            nxt, reqs = _ring_exchange(kv, group)
        n = _block_valid(kv_len, (rank - step) % sp, lc)
        yield kv[0, :, :, :n], kv[1, :, :, :n]
        if step + 1 < sp:
            _wait(reqs)
            kv = nxt


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, kv_len, kernel):
        scale = 1.0 / math.sqrt(q.shape[-1])
        out, lse, aux = rk.forward_over_blocks(q, _ring_blocks(torch.stack((k, v)), group, kv_len), kernel, scale)
        out = out.to(q.dtype)
        # The global output in the input dtype (what the caller gets) and the global LSE are all the fused
        # backward kernels need besides q and each K/V block.
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.kv_len, ctx.kernel, ctx.aux, ctx.scale = group, kv_len, kernel, aux, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        group, kv_len, kernel = ctx.group, ctx.kv_len, ctx.kernel
        sp, rank = _size(group), _rank(group)
        lc = q.shape[2]
        acc = rk.acc_dtype(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = torch.stack((k, v))
        # dK/dV accumulator (fp32) of the block currently held; it travels around the ring with the K/V block.
        dkv = torch.zeros(kv.shape, dtype=acc, device=kv.device)
        for step in range(sp):
            if step + 1 < sp:
                nxt, reqs = _ring_exchange(kv, group)
            n = _block_valid(kv_len, (rank - step) % sp, lc)
            if n > 0:  # a block wholly beyond kv_len is padding: no contribution
                gq, gk, gv = kernel.backward(dout, q, kv[0, :, :, :n], kv[1, :, :, :n], out, lse, ctx.aux, ctx.scale)
                dq += gq
                dkv[0, :, :, :n] += gk
                dkv[1, :, :, :n] += gv
            # Pass the accumulator on; after sp hops each rank holds its own block's complete dK/dV.
            dkv, dreqs = _ring_exchange(dkv, group, tag=1)
            _wait(dreqs)
            if step + 1 < sp:
                _wait(reqs)
                kv = nxt
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


@torch.compiler.disable  # P2P inside: under compiled blocks, dynamo breaks the graph here and runs this eagerly
def ring_attention(q, k, v, group=None, kv_len: int | None = None, kernel: str = "auto") -> torch.Tensor:
    """Sequence-sharded attention by K/V rotation (non-causal, no mask, scale 1/sqrt(D)).

    q, k, v: [B, H, L/sp, D], this rank's contiguous chunk. Returns [B, L/sp, H*D]. Keys at global positions
    >= kv_len are ignored (padding at the end of the global sequence). `kernel`: the per-block kernel name
    (`ring_kernels.KERNELS`; "auto": fused with LSE where one exists, see `ring_kernels.select_kernel`).
    """
    b, h, lc, d = q.shape
    if _size(group) == 1:
        n = lc if kv_len is None else kv_len
        return attn_mod.attention(q, k[:, :, :n], v[:, :, :n])
    impl = rk.select_kernel(q.device, q.dtype, d, kernel)
    out = _RingAttention.apply(q, k, v, group, kv_len, impl)
    return out.transpose(1, 2).reshape(b, lc, h * d)
