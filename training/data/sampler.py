"""`VariableVideoBatchSampler`: bucketed micro-batches, one per data-parallel rank per step (docs/models.md#buckets).

Epoch plan (a pure function of table, bucket config, seed and epoch):

1. assign every row to a bucket (`BucketConfig.assign`, seeded by (seed, epoch, row));
2. per bucket (canonical order): shuffle its rows, then pad (repeat from the front) or, with `drop_last`, drop
   down to a multiple of its batch size, and cut into micro-batches;
3. shuffle the global list of micro-batches;
4. step s gives rank r the micro-batch at global position `s·world_size + r`. The tail is padded by wrapping
   around to the front of the list (or dropped with `drop_last`), so every rank has the same number of steps.

Different ranks can therefore train different shapes in the same step. The state is (epoch, global
micro-batches consumed); the plan does not depend on world size, so a run resumed on a different number of
ranks continues from the same global position.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from .buckets import Assignment, BucketConfig, BucketId
from soraflow.common.clip_table import load_table

__all__ = ["VariableVideoBatchSampler", "data_revision", "parse_index"]


def parse_index(index: str) -> tuple[int, int, int, int]:
    """"idx-T-H-W" -> (idx, T, H, W)."""
    try:
        idx, t, h, w = (int(x) for x in str(index).split("-"))
    except ValueError:
        raise ValueError(f"dataset index must look like 'idx-T-H-W', got {index!r}") from None
    return idx, t, h, w


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def data_revision(table, bucket_config: dict, **settings) -> str:
    """Fingerprint of the data an epoch plan is made from: sha256 over the table (file bytes, or the
    DataFrame's contents), the bucket config and any extra settings (e.g. divisor, fps_max); 16 hex digits.

    The trainer stores it in checkpoints; a resume with a different revision cannot replay the same batches.
    """
    h = hashlib.sha256()
    if isinstance(table, pd.DataFrame):
        h.update(pd.util.hash_pandas_object(table, index=True).values.tobytes())
        h.update(json.dumps(list(map(str, table.columns))).encode())
    else:
        h.update(_file_digest(Path(table)).encode())
    h.update(json.dumps(_canonical(bucket_config), sort_keys=True, default=str).encode())
    h.update(json.dumps(_canonical(settings), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class VariableVideoBatchSampler(Sampler[list[str]]):
    """Yields, for this rank, one micro-batch of dataset indices ("idx-T-H-W") per step.

    `len(sampler)` is the number of steps per epoch (the same on every rank). `state_dict()` holds the epoch and
    the global number of micro-batches consumed; a sampler that loads it yields exactly the remaining batches of
    an uninterrupted run. When the sampler feeds a DataLoader with workers, the loader (not the sampler) knows
    how many batches the trainer really took: use `soraflow.training.data.loader.BucketDataLoader.state_dict()`.
    """

    def __init__(self, table, bucket_config: dict | BucketConfig, *, rank: int = 0, world_size: int = 1,
                 seed: int = 42, shuffle: bool = True, drop_last: bool = False, divisor: int = 16,
                 fps_max: int = 24, revision: str | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.table = load_table(table) if not isinstance(table, pd.DataFrame) else table.reset_index(drop=True)
        self.buckets = bucket_config if isinstance(bucket_config, BucketConfig) else BucketConfig(
            bucket_config, divisor=divisor, fps_max=fps_max)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.epoch = 0
        self.consumed = 0  # global micro-batches consumed in this epoch (a multiple of world_size at step ends)
        self.count_on_yield = True  # a BucketDataLoader turns this off and counts what the trainer receives
        self.revision = revision or data_revision(
            table if not isinstance(table, (str, os.PathLike)) else Path(table), self.buckets.raw,
            divisor=self.buckets.divisor, fps_max=self.buckets.fps_max)
        self._plan_cache: tuple[int, list[tuple[BucketId, list[int]]]] | None = None

    # -- epoch plan -----------------------------------------------------------------------------------------------
    def assignment(self, epoch: int | None = None) -> Assignment:
        t = self.table
        return self.buckets.assign(t["num_frames"].to_numpy(), t["height"].to_numpy(), t["width"].to_numpy(),
                                   t["fps"].to_numpy(dtype=np.float64, na_value=np.nan),
                                   seed=self.seed, epoch=self.epoch if epoch is None else epoch)

    def micro_batches(self, epoch: int | None = None) -> list[tuple[BucketId, list[int]]]:
        """The global, shuffled list of (bucket, rows) micro-batches of an epoch, before the rank split."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([self.seed, epoch, 0x5A3B1E])))
        batches: list[tuple[BucketId, list[int]]] = []
        for bucket, rows in self.assignment(epoch).groups().items():
            rows = np.asarray(rows)
            if self.shuffle:
                rows = rows[rng.permutation(len(rows))]
            bs = self.buckets.batch_size(bucket)
            if self.drop_last:
                rows = rows[: len(rows) // bs * bs]
            elif len(rows) % bs:
                rows = np.resize(rows, math.ceil(len(rows) / bs) * bs)  # repeats from the front
            rows = rows.tolist()
            batches.extend((bucket, rows[i: i + bs]) for i in range(0, len(rows), bs))
        if self.shuffle and batches:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan_cache = (epoch, batches)
        return batches

    def _num_steps(self, remaining: int) -> int:
        return remaining // self.world_size if self.drop_last else math.ceil(remaining / self.world_size)

    def __len__(self) -> int:
        return self._num_steps(len(self.micro_batches()))

    def __iter__(self) -> Iterator[list[str]]:
        plan = self.micro_batches()
        epoch, start = self.epoch, self.consumed
        for s in range(self._num_steps(max(0, len(plan) - start))):
            bucket, rows = plan[(start + s * self.world_size + self.rank) % len(plan)]
            if self.count_on_yield and self.epoch == epoch:
                self.consumed = start + (s + 1) * self.world_size
            yield [bucket.index_string(i) for i in rows]

    # -- epoch and state ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`; the consumed count resets only when the epoch changes (so a resumed run can call
        `set_epoch` with the epoch it loaded)."""
        if int(epoch) != self.epoch:
            self.epoch, self.consumed = int(epoch), 0

    def advance(self, steps: int = 1) -> None:
        """Record that the trainer took `steps` more steps (used by the DataLoader wrapper)."""
        self.consumed += int(steps) * self.world_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed_micro_batches": self.consumed, "seed": self.seed,
                "world_size": self.world_size, "data_revision": self.revision}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore (epoch, consumed). With `strict`, a different seed or data revision is an error (the batches
        would differ); a different world size is allowed (the global position carries over)."""
        if strict:
            if int(state.get("seed", self.seed)) != self.seed:
                raise ValueError(f"sampler state has seed {state['seed']}, this sampler uses {self.seed}")
            if state.get("data_revision", self.revision) != self.revision:
                raise ValueError(f"sampler state is for data revision {state['data_revision']}, this sampler "
                                 f"reads {self.revision} (table or bucket config changed)")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed_micro_batches"])
