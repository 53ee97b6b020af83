"""Bucketed DataLoader: batch sampler + worker processes + pinned memory + prefetch (docs/models.md#buckets,
docs/architecture.md#data-loading).

`build_dataloader(...)` returns a `BucketDataLoader`. Iterating it yields one collated micro-batch per step:

    {"video": [B, 3, T, H, W] (or latents in cached mode), "text": [str], "fps": [...], "index": ["idx-T-H-W"],
     "path": [...], "num_samples": B, "skipped": [(path, reason), ...]}

Skipped (unreadable) items are dropped by the collate; a batch whose items were all skipped comes back with
`num_samples == 0` and `video is None` so every rank still takes the same number of steps (the trainer decides how
to spend such a step). `loader.state_dict()` counts the batches the trainer actually received (not those the
worker prefetch already asked for), so `load_state_dict` resumes exactly after the last batch taken.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

import torch
from torch.utils.data import DataLoader

from .dataset import VideoTextDataset
from .sampler import VariableVideoBatchSampler, data_revision

__all__ = ["build_dataloader", "BucketDataLoader", "collate_skip"]

_STACK_KEYS = ("video", "text_t5", "text_clip")


def collate_skip(items: list[dict]) -> dict:
    """Drop skipped items and stack same-shape tensors; other fields become lists."""
    good = [it for it in items if not it.get("skipped")]
    out: dict = {"num_samples": len(good),
                 "skipped": [(it.get("path"), it.get("reason")) for it in items if it.get("skipped")]}
    if not good:
        for k in _STACK_KEYS:
            out[k] = None
        return out
    for key in good[0]:
        values = [it.get(key) for it in good]
        if key in _STACK_KEYS and all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ValueError(f"batch items disagree on {key!r} shape: {sorted(shapes)} (indices "
                                 f"{[it.get('index') for it in good]})")
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


def _worker_init(_):
    torch.set_num_threads(1)


class BucketDataLoader:
    """A resumable, bucketed loader over a `VideoTextDataset` and a `VariableVideoBatchSampler`."""

    def __init__(self, dataset: VideoTextDataset, sampler: VariableVideoBatchSampler, *, num_workers: int = 0,
                 pin_memory: bool | None = None, prefetch_factor: int | None = 2, multiprocessing_context=None,
                 timeout: float = 0):
        self.dataset, self.sampler = dataset, sampler
        self.sampler.count_on_yield = False  # this wrapper counts what the trainer receives
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory and
                                                                                    torch.cuda.is_available())
        self.prefetch_factor = prefetch_factor if self.num_workers > 0 else None
        self.multiprocessing_context = multiprocessing_context
        self.timeout = timeout
        self.skip_counts: Counter = Counter()

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(self.sampler.epoch)

    def torch_loader(self) -> DataLoader:
        """The underlying torch DataLoader for the rest of the current epoch."""
        self.dataset.set_epoch(self.sampler.epoch)
        return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                          collate_fn=collate_skip, pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                          worker_init_fn=_worker_init if self.num_workers else None, persistent_workers=False,
                          multiprocessing_context=self.multiprocessing_context if self.num_workers else None,
                          timeout=self.timeout)

    def __iter__(self):
        for batch in self.torch_loader():
            self.sampler.advance(1)
            for _, reason in batch["skipped"]:
                self.skip_counts[reason] += 1
            yield batch

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "skip_counts": dict(self.skip_counts)}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        self.sampler.load_state_dict(state["sampler"], strict=strict)
        self.dataset.set_epoch(self.sampler.epoch)
        self.skip_counts = Counter(state.get("skip_counts", {}))


def build_dataloader(table_path, bucket_config: dict, *, rank: int = 0, world_size: int = 1, seed: int = 42,
                     num_workers: int = 0, pin_memory: bool | None = None, prefetch_factor: int | None = 2,
                     shuffle: bool = True, drop_last: bool = False, fps_max: int = 24, divisor: int = 16,
                     cached: bool | None = None, use_motion_score: bool = True, epoch: int = 0,
                     multiprocessing_context=None) -> BucketDataLoader:
    """Dataset + batch sampler + DataLoader for one data-parallel rank.

    `bucket_config` batch sizes are per rank; `rank`/`world_size` are the data-parallel rank and size (one SP
    group counts as one rank). `pin_memory=None` pins when CUDA is present. `loader.sampler` holds the state.
    """
    dataset = VideoTextDataset(table_path, seed=seed, fps_max=fps_max, cached=cached,
                               use_motion_score=use_motion_score)
    revision = None if isinstance(table_path, pd.DataFrame) else data_revision(
        Path(table_path), bucket_config, divisor=divisor, fps_max=fps_max)  # fingerprint the file's bytes
    sampler = VariableVideoBatchSampler(dataset.table, bucket_config, rank=rank, world_size=world_size, seed=seed,
                                        shuffle=shuffle, drop_last=drop_last, divisor=divisor, fps_max=fps_max,
                                        revision=revision)
    loader = BucketDataLoader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory,
                              prefetch_factor=prefetch_factor, multiprocessing_context=multiprocessing_context)
    loader.set_epoch(epoch)
    return loader
