"""How models are run in parallel and fast, from outside the models (docs/architecture.md, "Models hold
architecture only"): one module per model (`mmdit`, `dc_ae`, `hunyuan_vae`) applying FSDP2, sequence
parallelism, activation checkpointing and torch.compile; the generic pieces they use (`sequence`,
`ring_kernels`, `checkpointing`)."""

from .sequence import gather_from_sp, ring_attention, split_for_sp, ulysses_attention

__all__ = [
    "gather_from_sp",
    "ring_attention",
    "split_for_sp",
    "ulysses_attention",
]
