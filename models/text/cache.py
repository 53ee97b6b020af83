"""Prompt-embedding cache: in-memory LRU plus an optional on-disk directory of safetensors files.

A key is the sha256 of (encoder fingerprint, dtype, max_length, text length, prompt). Disk writes go
to a unique temporary name in the same directory and are then renamed (``os.replace``), so a reader
never sees a half-written file; concurrent writers of the same key simply race to an identical file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["EmbeddingCache", "make_cache_key"]

_TENSOR_NAME = "embedding"


def make_cache_key(fingerprint: str, dtype: torch.dtype, max_length: int, prompt: str,
                   length: int | None = None) -> str:
    """sha256 hex of the encoder fingerprint, dtype, max_length, final text length and prompt."""
    payload = json.dumps(
        {"fp": fingerprint, "dtype": str(dtype), "max_length": int(max_length),
         "length": None if length is None else int(length), "prompt": prompt},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """LRU of CPU tensors (``max_items`` entries; 0 disables the memory level) with an optional
    ``cache_dir`` of ``<key>.safetensors`` files. Counters: ``hits``, ``disk_hits``, ``misses``."""

    def __init__(self, max_items: int = 128, cache_dir: str | os.PathLike | None = None):
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = int(max_items)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._mem: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._mem)

    def __contains__(self, key: str) -> bool:
        return key in self._mem or (self.cache_dir is not None and self._path(key).is_file())

    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{key}.safetensors"

    def _remember(self, key: str, value: Tensor) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)

    def get(self, key: str) -> Tensor | None:
        with self._lock:
            t = self._mem.get(key)
            if t is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return t
        if self.cache_dir is not None:
            path = self._path(key)
            if path.is_file():
                t = self._read(path, key)
                if t is not None:
                    self.disk_hits += 1
                    self._remember(key, t)
                    return t
        self.misses += 1
        return None

    def put(self, key: str, value: Tensor, meta: dict[str, str] | None = None) -> None:
        value = value.detach().to("cpu").contiguous()
        self._remember(key, value)
        if self.cache_dir is not None:
            self._write(self._path(key), key, value, meta or {})

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()

    # -- disk ---------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path, key: str) -> Tensor | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None
                return f.get_tensor(_TENSOR_NAME)
        except Exception:  # noqa: BLE001 - an unreadable file is a miss; it will be rewritten
            return None

    @staticmethod
    def _write(path: Path, key: str, value: Tensor, meta: dict[str, str]) -> None:
        from safetensors.torch import save_file

        metadata = {str(k): str(v) for k, v in meta.items()}
        metadata["key"] = key
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            save_file({_TENSOR_NAME: value.clone()}, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
