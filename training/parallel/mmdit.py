"""How an MMDiT is run: FSDP2 units, activation checkpointing, torch.compile, sequence parallelism and the
kernel choices, applied from outside the model (docs/architecture.md, "Models hold architecture only").

`models/mmdit` holds the architecture; the trainer (`training/builders.py`, `training/strategies.py`,
`training/trainer.py`), the inference library (`inference/`) and the benchmarks call these functions.
None of them changes a parameter name, so the state dict stays the official one.

Sequence parallelism of the joint sequence:

* Every rank of an SP group gets the *same* full inputs. After embedding, the joint [text; image] sequence is cut
  into sp equal contiguous chunks; each rank runs the blocks on its chunk with a distributed attention
  (`training/parallel/sequence.py`) and the final layer on its chunk, and the outputs are all-gathered, so
  `model(**inputs)` returns the full output on every rank.
* Padding: if L_txt + L_img is not a multiple of sp, zero tokens are appended at the *end* of the joint sequence
  (after the image tokens, identity RoPE) and excluded from attention as keys (`kv_len`), so the real tokens'
  outputs and all gradients are exactly those of the unpadded single-process model. (Open-Sora instead makes the
  trainer pad the T5 ids so the pad tokens are real, attended inputs; a trainer doing that gets no padding here.)
* Double blocks: a rank's chunk may hold text tokens, image tokens, both, or only one kind (text comes first, so
  at most one rank straddles the boundary). The chunk is cut at the text/image boundary and each part goes
  through its own stream's weights; an empty part is a [B, 0, d] tensor, which every op in the blocks handles.
  So, unlike Open-Sora, SP is never switched off for a forward: a rank without image tokens just has an empty
  image stream.
"""

from __future__ import annotations

import functools
import types
import weakref

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from soraflow.models.mmdit import MMDiT
from soraflow.training.parallel import ring_kernels as rk
from soraflow.training.parallel.checkpointing import checkpoint_module, grad_enabled_in_training, remove_checkpointing
from soraflow.training.parallel.sequence import MODES, gather_from_sp, ring_attention, split_for_sp, ulysses_attention


def _blocks(model: MMDiT) -> list[nn.Module]:
    return list(model.double_blocks) + list(model.single_blocks)


# ---- activation checkpointing ---------------------------------------------------------------------------------

def apply_activation_checkpointing(model: MMDiT, settings: tuple[int, int] | None) -> MMDiT:
    """`settings` = (n_double, n_single): recompute the first n blocks of each kind in backward (Open-Sora's
    `grad_ckpt_settings`; docs/models.md, "MMDiT"); None = none. Only a training-mode forward with grad enabled
    is checkpointed. Call before FSDP2 wraps the blocks; calling again replaces the previous settings."""
    n_double, n_single = settings or (0, 0)
    for blocks, n in ((model.double_blocks, n_double), (model.single_blocks, n_single)):
        for i, block in enumerate(blocks):
            if i < n:
                checkpoint_module(block, grad_enabled_in_training)
            else:
                remove_checkpointing(block)
    return model


# ---- FSDP2 ----------------------------------------------------------------------------------------------------

def apply_fsdp(model: MMDiT, mesh, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
               reshard_after_forward: bool = True) -> MMDiT:
    """`fully_shard` every transformer block, then the root: parameters, gradients and optimizer state sharded
    over `mesh`; compute in `param_dtype` with fp32 master weights and `reduce_dtype` reductions."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    # Blocks take their inputs as the root made them: the root casts the model's inputs, while the fp32
    # RoPE tables must reach the blocks in fp32. (A block-level cast also broke activation checkpointing:
    # FSDP skips it when the block is recomputed in backward, so the recomputed tables were fp32.)
    block_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=block_mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


# ---- torch.compile --------------------------------------------------------------------------------------------

def apply_compile(model: MMDiT, **compile_kwargs) -> MMDiT:
    """torch.compile each block and the final layer: fuses norms, modulation, RoPE and gating around the
    matmuls (and, in training, the bias and modulation gradients' reductions).

    All blocks of a kind share one compiled graph (parameters are graph inputs); the cache limit is raised
    so dynamo never falls back to eager for the later blocks. Each block's checkpointing and FSDP2 hooks stay
    outside its compiled call.
    """
    import torch._dynamo as dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 128))
    for block in _blocks(model) + [model.final_layer]:
        block.compile(**compile_kwargs)
    return model


# ---- kernel choices -------------------------------------------------------------------------------------------

def set_concat_projections(model: MMDiT, on: bool) -> MMDiT:
    """Run the projections that share an input as one GEMM (`on`, the default) or one by one (benchmarks
    compare the two; same values and gradients). Read at trace time: compile after setting it."""
    for module in model.modules():
        if hasattr(module, "concat_projections"):
            module.concat_projections = bool(on)
    return model


def set_sdpa_backend(name: str) -> None:
    """Enable one SDPA kernel family process-wide ("cudnn", "flash", "efficient", "math" or "all").

    torch's global flags rather than a context manager so the choice also holds inside torch.compile'd blocks.
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


# ---- sequence parallelism -------------------------------------------------------------------------------------

def unwrap_mmdit(model) -> MMDiT:
    """The MMDiT inside DDP / torch.compile wrappers."""
    for _ in range(4):
        if isinstance(model, MMDiT):
            return model
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            break
    raise TypeError("sequence parallelism needs an MMDiT (possibly inside DDP or torch.compile)")


class SequenceParallel:
    """The SP forward installed on one MMDiT by `apply_sequence_parallel`; its handle."""

    def __init__(self, model, group=None, mode: str = "ring", ring_kernel: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"unknown sequence-parallel mode {mode!r}; choose from {MODES}")
        if not dist.is_initialized():
            raise RuntimeError("sequence parallelism needs torch.distributed to be initialised")
        model = unwrap_mmdit(model)
        if ring_kernel not in rk.KERNELS:
            raise ValueError(f"unknown ring attention kernel {ring_kernel!r}; choose from {rk.KERNELS}")
        self.group, self.mode, self.ring_kernel = group, mode, ring_kernel
        self.sp = dist.get_world_size(group)
        heads = model.config.num_heads
        if mode == "ulysses" and heads % self.sp:
            raise ValueError(
                f"Ulysses sequence parallelism needs num_heads ({heads}) divisible by the SP size ({self.sp})"
            )
        self._model = weakref.ref(model)
        # An instance attribute shadows the class's forward; a bound method, so a deep copy of the model (EMA)
        # gets a forward bound to the copy, through this same handle.
        self._previous = model.__dict__.get("forward")
        model.forward = types.MethodType(self, model)

    def remove(self) -> None:
        model = self._model()
        if model is None or not is_sequence_parallel(model) or model.forward.__func__ is not self:
            return
        if self._previous is None:
            del model.forward
        else:
            model.forward = self._previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __deepcopy__(self, memo):  # a deep-copied model (e.g. EMA) shares the group, not a copy of it
        return self

    def attention_fn(self, kv_len: int | None):
        if self.mode == "ulysses":
            return functools.partial(ulysses_attention, group=self.group, kv_len=kv_len)
        return functools.partial(ring_attention, group=self.group, kv_len=kv_len, kernel=self.ring_kernel)

    def __call__(self, model: MMDiT, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
        """MMDiT.forward's contract: packed noisy latent -> full packed velocity [B, L_img, C_out] on every rank."""
        img, txt, vec, pe = model.prepare_block_inputs(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        sp, rank = self.sp, dist.get_rank(self.group)
        if sp == 1:
            x = model.forward_blocks(img, txt, vec, pe)
            return model.final_layer(x[:, txt.shape[1] :], vec)
        n_txt, n_img = txt.shape[1], img.shape[1]
        n = n_txt + n_img
        pad = -n % sp
        chunk = (n + pad) // sp
        x = torch.cat((txt, img), dim=1)
        cos, sin = pe
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            cos = F.pad(cos, (0, 0, 0, pad), value=1.0)  # identity rotation for the pad tokens
            sin = F.pad(sin, (0, 0, 0, pad), value=0.0)
        x = split_for_sp(x, self.group, dim=1)
        start = rank * chunk
        pe_local = (cos[:, :, start : start + chunk], sin[:, :, start : start + chunk])
        t_local = max(0, min(chunk, n_txt - start))  # this rank's text tokens come first in its chunk
        h = model.forward_blocks(
            x[:, t_local:], x[:, :t_local], vec, pe_local, attn_fn=self.attention_fn(n if pad else None)
        )
        # The final layer is token-wise: apply it to the whole chunk so every rank gathers an equal-size piece.
        out = gather_from_sp(model.final_layer(h, vec), self.group, dim=1)
        return out[:, n_txt:n]


def is_sequence_parallel(model) -> bool:
    """Whether an SP forward is installed on this MMDiT (or the one inside a wrapper)."""
    fwd = unwrap_mmdit(model).__dict__.get("forward")
    return isinstance(fwd, types.MethodType) and isinstance(fwd.__func__, SequenceParallel)


def apply_sequence_parallel(model, group=None, mode: str = "ring", ring_kernel: str = "auto") -> SequenceParallel:
    """Run `model` (an MMDiT, possibly inside DDP / torch.compile) sequence-parallel over `group`.

    Installs the SP forward and returns its handle: `model(**inputs)` on every rank of the group, given the same
    full inputs, then returns the same full output as the single-process model. Use the handle as a context
    manager (`with apply_sequence_parallel(model, group, "ulysses"): ...`) or call `.remove()` to switch back.
    The distributed attention is passed to the blocks as an argument, so backward (and activation-checkpoint
    recomputation) after leaving the context is still correct. Parameter gradients: their mean over the SP
    group is the single-process gradient (`training/parallel/sequence.py`). `ring_kernel` picks ring attention's
    per-block kernel (`ring_kernels.select_kernel`; "auto" = fused with LSE, "matmul" = the portable reference).
    """
    return SequenceParallel(model, group, mode, ring_kernel)
