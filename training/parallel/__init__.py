"""Model parallelism for training: sequence (context) parallelism for the MMDiT (spec §F.2)."""

from .sequence import (
    SequenceParallel,
    gather_from_sp,
    ring_attention,
    sequence_parallel,
    split_for_sp,
    ulysses_attention,
)

__all__ = [
    "SequenceParallel",
    "gather_from_sp",
    "ring_attention",
    "sequence_parallel",
    "split_for_sp",
    "ulysses_attention",
]
