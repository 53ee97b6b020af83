"""Activation checkpointing applied to a model from outside (docs/architecture.md, "Models hold architecture only").

`checkpoint_module(m, when)` makes every call of `m` run under `torch.utils.checkpoint` (non-reentrant) while
`when(m, args)` holds: the activations inside `m` are dropped after forward and recomputed in backward. The
module tree, parameter names and state-dict keys stay as they are (a key-compatible alternative to torch's
`checkpoint_wrapper`, which inserts a `_checkpoint_wrapped_module` level): the module's class is swapped for a
subclass whose `__call__` wraps `nn.Module.__call__`, the technique FSDP2's `fully_shard` uses for its own hooks.

Because the checkpoint wraps the whole call, hooks and a compiled `_call_impl` (`nn.Module.compile`) run inside
it, so the recomputation in backward goes through them again (FSDP2's unshard, the compiled graph), and call
arguments such as a sequence-parallel attention are saved with the inputs and reused by the recomputation.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

# (module, positional args) -> checkpoint this call?
When = Callable[[nn.Module, tuple], bool]


@functools.lru_cache(maxsize=None)
def _checkpointed_class(cls: type) -> type:
    def __call__(self, *args, **kwargs):
        if self._soraflow_ac_when(self, args):
            return checkpoint(nn.Module.__call__, self, *args, use_reentrant=False, **kwargs)
        return nn.Module.__call__(self, *args, **kwargs)

    return type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": __call__, "_soraflow_ac_base": cls})


def checkpoint_module(module: nn.Module, when: When) -> nn.Module:
    """Recompute `module` in backward whenever `when(module, args)` is true (idempotent; returns `module`)."""
    if is_checkpointed(module):
        module._soraflow_ac_when = when
        return module
    if type(module).__call__ is not nn.Module.__call__:
        raise TypeError(f"{type(module).__name__} overrides __call__; checkpoint it before wrapping it further")
    module._soraflow_ac_when = when
    module.__class__ = _checkpointed_class(type(module))
    return module


def remove_checkpointing(module: nn.Module) -> nn.Module:
    """Undo `checkpoint_module` (only before another wrapper, e.g. FSDP2, has swapped the class again)."""
    cls = type(module)
    if not is_checkpointed(module):
        return module
    base = cls.__dict__.get("_soraflow_ac_base")
    if base is None:
        raise RuntimeError(f"{cls.__name__}: activation checkpointing can only be removed before the module is "
                           "wrapped further (FSDP2 swapped its class)")
    module.__class__ = base
    del module._soraflow_ac_when
    return module


def is_checkpointed(module: nn.Module) -> bool:
    return hasattr(type(module), "_soraflow_ac_base")


def grad_enabled_in_training(module: nn.Module, args: tuple) -> bool:
    """Checkpoint only a training-mode forward that records a graph (eval and no_grad run plainly)."""
    import torch

    return module.training and torch.is_grad_enabled()


def grad_enabled_and_input_requires_grad(module: nn.Module, args: tuple) -> bool:
    """Checkpoint only when the first input carries a gradient (a frozen part's first call needs no recompute)."""
    import torch

    return torch.is_grad_enabled() and bool(args) and torch.is_tensor(args[0]) and args[0].requires_grad


def set_activation_checkpointing(units, enabled: bool = True) -> None:
    """Recompute each of `units` in backward when its input carries a gradient (`enabled=False` undoes it)."""
    for unit in units:
        if enabled:
            checkpoint_module(unit, grad_enabled_and_input_requires_grad)
        else:
            remove_checkpointing(unit)
