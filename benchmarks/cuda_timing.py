"""One CUDA-event timer for the GPU benchmarks: warm up, then the median of timed runs."""

from __future__ import annotations

import statistics

import torch


def cuda_time(fn, warmup: int = 3, iters: int = 10) -> tuple[float, list[float]]:
    """(median seconds, all seconds) of `fn()` timed with CUDA events after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), times
