"""Safetensors files whose bytes depend only on their tensors and metadata.

The safetensors library keeps the `__metadata__` map in a hash map, so the same tensors and metadata can come
out with the metadata keys in another order, and so with another checksum, on each save. Model files are keyed
by their checksum downstream (the next stage's run folder, caches), so here the header is rewritten with its
metadata keys sorted; the tensor entries keep the library's order (by data offset), the data is untouched.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from soraflow.common.atomic import write_bytes_atomic


def canonical_bytes(data: bytes) -> bytes:
    """`data` (a safetensors file) with its header's metadata keys sorted; same length, same tensors."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    tensors = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | dict(tensors)
    text = json.dumps(ordered, separators=(",", ":")).encode()
    if len(text) > n:
        raise ValueError("canonical safetensors header is longer than the original")
    text += b" " * (n - len(text))  # the library pads the header with spaces to its alignment
    return data[:8] + text + data[8 + n:]


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (contiguous copies taken) with `metadata` as a byte-deterministic safetensors file,
    through a temporary name and a rename."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    path = Path(path)
    write_bytes_atomic(path, canonical_bytes(data))
    return path
