"""The names of the floating-point types a config or a command line may give, and the torch type of each:
the one map the trainer's strategies, the inference library and the eval use."""

from __future__ import annotations

__all__ = ["DTYPE_NAMES", "torch_dtype", "dtype_name"]

DTYPE_NAMES = ("bf16", "fp16", "fp32")


def _table() -> dict:
    import torch  # imported on use: the command line lists the names without loading torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(name: str | None, default=None):
    """`"bf16"` -> torch.bfloat16 (likewise fp16, fp32); None -> `default`; anything else is a ValueError."""
    if name is None:
        return default
    table = _table()
    if name not in table:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return table[name]


def dtype_name(dtype) -> str:
    """torch.bfloat16 -> "bf16" (the inverse of `torch_dtype`)."""
    for name, value in _table().items():
        if value == dtype:
            return name
    raise ValueError(f"{dtype} has no name among {', '.join(DTYPE_NAMES)}")
