"""Flat fp32 master weights for one data-parallel rank: what FSDP2's mixed precision computes, in fewer passes.

FSDP2 on a one-rank group (bf16 compute, fp32 master weights, fp32 reduction) spends 10-13 ms of an 11B-width
6-block step on copies that a single rank does not need: the fp32 -> bf16 all-gather copy-in of every
parameter, the per-parameter copy-out, the gradients' `chunk_cat` into an fp32 buffer and the reduce-scatter
stand-in copy (benchmarks/README.md). This module keeps the same numbers with three flat buffers:

- `compute` (bf16): the module's parameters are views into it, so the forward reads them with no cast;
- `grad` (bf16): each parameter's gradient is copied into its slot as soon as autograd has accumulated it
  (a post-accumulate-grad hook; the per-parameter gradient is then freed);
- `master`, `exp_avg`, `exp_avg_sq` (fp32): the optimizer state, updated by one fused AdamW pass that reads the
  bf16 gradient, applies the clip coefficient, and writes the new master weight *and* its bf16 copy.

Numerics are FSDP2's on one rank: there the bf16 gradient is cast to fp32 (exact) before the optimizer, the
clip coefficient multiplies the fp32 gradient, AdamW runs in fp32 on the master weight, and the next forward
casts the master weight to bf16 (round to nearest). The fused pass does the same operations in the same order.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

_ALIGN = 16  # elements: every slot starts on a 64-byte boundary in fp32 (vectorised loads in the fused pass)


@functools.lru_cache(maxsize=None)  # built once per process
def _triton_adamw():
    """The fused AdamW pass as a Triton kernel, or None where Triton (or CUDA) is missing."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - no triton: the torch fallback runs
        return None

    @triton.jit
    def kernel(master_ptr, grad_ptr, m_ptr, v_ptr, out_ptr, coef_ptr, n, decay, beta1, beta2, eps, step_size,
               bc2_sqrt, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        coef = tl.load(coef_ptr)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32) * coef
        p = tl.load(master_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        p = p * decay
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * (g * g)
        denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p - step_size * (m / denom)
        tl.store(master_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(out_ptr + offs, p.to(out_ptr.dtype.element_ty), mask=mask)

    def launch(master, grad, m, v, out, coef, decay, beta1, beta2, eps, step_size, bc2_sqrt):
        n = master.numel()
        block = 2048
        kernel[(triton.cdiv(n, block),)](master, grad, m, v, out, coef, n, decay, beta1, beta2, eps, step_size,
                                         bc2_sqrt, BLOCK=block, num_warps=8)

    return launch


def fused_adamw_(master, grad, exp_avg, exp_avg_sq, out, coef, *, lr, beta1, beta2, eps, weight_decay, step,
                 use_triton: bool | None = None) -> None:
    """One AdamW update (torch.optim.AdamW's formula) of flat fp32 `master` from the low-precision `grad` times
    the scalar tensor `coef`; writes `out` = master rounded to out's dtype. All 1-D, same length."""
    decay = 1.0 - lr * weight_decay
    step_size = lr / (1.0 - beta1**step)
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    if use_triton is None:
        use_triton = master.is_cuda
    if use_triton:
        kernel = _triton_adamw()
        if kernel is not None:
            kernel(master, grad, exp_avg, exp_avg_sq, out, coef, decay, beta1, beta2, eps, step_size, bc2_sqrt)
            return
    # Reference path (CPU, or no Triton): the same operations as the kernel, in chunks to bound temporaries.
    chunk = 1 << 24
    for s in range(0, master.numel(), chunk):
        p, m, v = master[s:s + chunk], exp_avg[s:s + chunk], exp_avg_sq[s:s + chunk]
        g = grad[s:s + chunk].float() * coef
        p.mul_(decay)
        m.add_((g - m) * (1.0 - beta1))
        v.mul_(beta2).add_((g * g) * (1.0 - beta2))
        denom = v.sqrt().div_(bc2_sqrt).add_(eps)
        p.sub_(step_size * (m / denom))
        out[s:s + chunk].copy_(p)


class FlatParams:
    """The flat buffers behind one module's trainable parameters (see the module docstring)."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype):
        self.names, self.params, self.offsets = [], [], []
        total = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            self.names.append(name)
            self.params.append(p)
            self.offsets.append(total)
            total += -(-p.numel() // _ALIGN) * _ALIGN
        self.numel = total
        device = self.params[0].device if self.params else torch.device("cpu")
        self.master = torch.zeros(total, dtype=torch.float32, device=device)
        self.compute = torch.zeros(total, dtype=compute_dtype, device=device)
        self.grad = torch.zeros(total, dtype=compute_dtype, device=device)
        self.has_grad = [False] * len(self.params)
        with torch.no_grad():
            for p, off in zip(self.params, self.offsets):
                self.master[off:off + p.numel()].copy_(p.detach().reshape(-1))
            self.compute.copy_(self.master)
        for i, (p, off) in enumerate(zip(self.params, self.offsets)):
            p.data = self.compute[off:off + p.numel()].view(p.shape)
            p.register_post_accumulate_grad_hook(self._grad_hook(i))

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        p, off = self.params[i], self.offsets[i]
        return flat[off:off + p.numel()].view(p.shape)

    def _grad_hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            slot = self.view(self.grad, i)
            if self.has_grad[i]:  # a second backward before the step accumulates (in the gradient's dtype)
                slot.add_(p.grad)
            else:
                slot.copy_(p.grad)
                self.has_grad[i] = True
            p.grad = None  # the slot holds it; the per-parameter tensor goes back to the allocator now

        return hook

    def segments(self) -> list[tuple[int, int]]:
        """[start, end) element ranges of parameters that received a gradient this step, merged where adjacent.
        Slots without a gradient are zeroed so the gradient norm ignores them (AdamW skips them, as torch's
        AdamW skips a parameter whose .grad is None)."""
        out = []
        for i, (p, off) in enumerate(zip(self.params, self.offsets)):
            end = off + -(-p.numel() // _ALIGN) * _ALIGN
            if not self.has_grad[i]:
                self.grad[off:end].zero_()
                continue
            if out and out[-1][1] == off:
                out[-1] = (out[-1][0], end)
            else:
                out.append((off, end))
        return out

    def sync_compute(self) -> None:
        """compute <- master (rounded), after the master weights were loaded or changed outside the optimizer."""
        with torch.no_grad():
            self.compute.copy_(self.master)


class FlatAdamW(torch.optim.Optimizer):
    """AdamW over a `FlatParams`: fp32 master weights and moments, bf16 gradients in, bf16 weights out.

    `state_dict()` has torch's layout keyed by parameter name (as `torch.distributed.checkpoint.state_dict.
    get_state_dict` gives for FSDP2), so checkpoints of the two strategies load into each other.
    """

    def __init__(self, flat: FlatParams, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.flat = flat
        # The param-group keys of torch's AdamW in this torch version (what an FSDP2 checkpoint stores).
        probe = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay, fused=flat.master.is_cuda,
                                  foreach=None if flat.master.is_cuda else True)
        defaults = {k: v for k, v in probe.param_groups[0].items() if k != "params"}
        super().__init__([flat.master], defaults)
        self.exp_avg = torch.zeros_like(flat.master)
        self.exp_avg_sq = torch.zeros_like(flat.master)
        self.steps = 0
        self.clip_coef = torch.ones((), dtype=torch.float32, device=flat.master.device)

    @torch.no_grad()
    def grad_norm(self, max_norm: float) -> torch.Tensor:
        """The gradients' global L2 norm (fp32 accumulation); sets the clip coefficient the next step applies
        (torch.nn.utils.clip_grad_norm_'s: max_norm / (norm + 1e-6), at most 1; max_norm <= 0: no clipping)."""
        segs = self.flat.segments()
        if not segs:
            return torch.zeros((), device=self.flat.master.device)
        # Per-parameter norms, then the norm of those: clip_grad_norm_'s order (one multi-tensor kernel on CUDA;
        # one fp32 sum over the whole flat buffer loses ~1e-5 relative on a CPU).
        f = self.flat
        views = [f.view(f.grad, i) for i in range(len(f.params)) if f.has_grad[i]]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(views, 2.0, dtype=torch.float32)))
        if max_norm > 0:
            torch.clamp(max_norm / (norm + 1e-6), max=1.0, out=self.clip_coef)
        else:
            self.clip_coef.fill_(1.0)
        return norm

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("FlatAdamW.step takes no closure")
        segs = self.flat.segments()
        if not segs:
            return None
        self.steps += 1
        g = self.param_groups[0]
        beta1, beta2 = g["betas"]
        f = self.flat
        for s, e in segs:
            fused_adamw_(f.master[s:e], f.grad[s:e], self.exp_avg[s:e], self.exp_avg_sq[s:e], f.compute[s:e],
                         self.clip_coef, lr=float(g["lr"]), beta1=beta1, beta2=beta2, eps=g["eps"],
                         weight_decay=g["weight_decay"], step=self.steps)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Slots are overwritten by the first gradient of the next backward; only the bookkeeping resets.
        self.flat.has_grad = [False] * len(self.flat.params)
        self.clip_coef.fill_(1.0)

    # -- state in torch's per-parameter layout, keyed by name ------------------------------------------------------
    def state_dict(self) -> dict:
        f = self.flat
        step = torch.tensor(float(self.steps))
        # Present from step 0 on (as get_state_dict initialises torch's lazy AdamW state), so a checkpoint
        # loads into this optimizer in place whatever its step.
        state = {name: {"step": step.clone(), "exp_avg": f.view(self.exp_avg, i),
                        "exp_avg_sq": f.view(self.exp_avg_sq, i)} for i, name in enumerate(f.names)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(f.names)}]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        f = self.flat
        state = state_dict.get("state", {})
        missing = [n for n in f.names if n not in state]
        if state and missing:
            raise KeyError(f"optimizer state has no entry for {missing[:5]} ({len(missing)} parameters)")
        steps = set()
        for i, name in enumerate(f.names):
            entry = state.get(name)
            if entry is None:
                continue
            for key, flat in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                dst, src = f.view(flat, i), _local(entry[key])
                if dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)
            steps.add(int(float(_local(entry["step"]))))
        if len(steps) > 1:
            raise ValueError(f"optimizer state holds different step counts per parameter: {sorted(steps)}")
        self.steps = steps.pop() if steps else 0
        for key, value in state_dict["param_groups"][0].items():
            if key != "params" and key in self.param_groups[0]:
                self.param_groups[0][key] = value


def _local(t):
    """A plain tensor from a DTensor (an FSDP2 checkpoint loaded elsewhere) or a tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
