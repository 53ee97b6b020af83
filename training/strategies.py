"""Data-parallel strategies behind one interface: FSDP2 (default), its one-rank form without FSDP2's copies
("master"), DDP, and ColossalAI (optional extra).

A strategy wraps the model, builds the optimizer, clips gradients and exposes model/optimizer state for
`torch.distributed.checkpoint`. The trainer never branches on which one is in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from soraflow.common.dtypes import dtype_name, torch_dtype


# re-exported: the config lives in a torch-free module (launchers resolve configs without importing torch)
from soraflow.training.optim import OptimConfig  # noqa: E402,F401


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every param group's learning rate (a tensor lr, as capturable/fused optimizers may hold, is filled)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class Strategy:
    name = "base"

    def __init__(self, param_dtype: str = "bf16", reduce_dtype: str = "fp32"):
        self.param_dtype = torch_dtype(param_dtype)
        self.reduce_dtype = torch_dtype(reduce_dtype)

    # -- set-up ---------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, device: torch.device, optim: OptimConfig):
        """Wrap the model for this strategy and build its optimizer: returns (model, optimizer)."""
        model = self.wrap(model, device)
        return model, self.build_optimizer(model, optim)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device=device, dtype=self.param_dtype)

    def build_optimizer(self, model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        # The fused CUDA kernel: one pass over parameter, gradient and both moments (FSDP2's DTensors included).
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=fused, foreach=None if fused else True)

    # -- step -----------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, optimizer) -> None:
        loss.backward()

    def forward_context(self):
        return torch.autocast("cuda", dtype=self.param_dtype, enabled=False)

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Runs after every optimizer step (FSDP2 with float8 all-gather precomputes the weights' scales)."""
        if getattr(model, "_soraflow_fp8_fsdp_scales", False):
            from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

            precompute_float8_dynamic_scale_for_fsdp(model)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)
        # FSDP2 returns a DTensor norm; make it a plain tensor for logging and the loss guard.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def load_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model


def _autocast(strategy: Strategy):
    """Autocast to the strategy's compute dtype on the device its model lives on (fp32: off)."""
    device_type = getattr(strategy, "device_type", "cuda")
    return torch.autocast(device_type, dtype=strategy.param_dtype, enabled=strategy.param_dtype != torch.float32)


class SingleDevice(Strategy):
    """One process, no collective: the reference the distributed strategies are tested against, and what a
    DDP recipe (or an FSDP2 recipe on a CPU) runs as when started as one process.

    Same precision as FSDP2's mixed-precision policy: the parameters, their gradients and the optimizer state
    stay fp32 (master weights); the forward runs under autocast in `param_dtype` on the model's device. On the
    H100 slice benchmark autocast's per-op casts cost more than FSDP2's one-rank copies (benchmarks/README.md),
    which is why an FSDP2 recipe on one GPU runs as "master" (below), not as this.
    """

    name = "single"

    def wrap(self, model, device):
        self.device_type = device.type
        return model.to(device=device, dtype=torch.float32)

    def forward_context(self):
        return _autocast(self)


class DDPStrategy(Strategy):
    """Replicated parameters, gradients all-reduced. Parameters stay in their dtype (use fp32 master + autocast
    on GPU for bf16 compute)."""

    name = "ddp"

    def wrap(self, model, device):
        from torch.nn.parallel import DistributedDataParallel

        self.device_type = device.type
        model = model.to(device=device)
        ids = [device.index] if device.type == "cuda" else None
        # Different ranks may run different bucket shapes; parameters are the same, so no unused-param search.
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def forward_context(self):
        return _autocast(self)

    def unwrap(self, model):
        return model.module


class FSDP2Strategy(Strategy):
    """`fully_shard` per transformer block then the root: parameters, gradients and optimizer state sharded
    across the data-parallel group; compute in `param_dtype` with fp32 master weights and fp32 reductions."""

    name = "fsdp2"

    def __init__(self, param_dtype="bf16", reduce_dtype="fp32", reshard_after_forward: bool = True):
        super().__init__(param_dtype, reduce_dtype)
        self.reshard_after_forward = reshard_after_forward

    def wrap(self, model, device):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from soraflow.models.mmdit import MMDiT

        model = model.to(device=device, dtype=torch.float32)  # fp32 master weights
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        if isinstance(model, MMDiT):  # per-block units: the model's parallelize module knows its blocks
            from soraflow.training.parallel.mmdit import apply_fsdp

            return apply_fsdp(model, mesh, self.param_dtype, self.reduce_dtype, self.reshard_after_forward)
        mp = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=self.reshard_after_forward)
        return model


class OneRankMasterStrategy(Strategy):
    """FSDP2's precision on a one-rank data-parallel group, without FSDP2's per-step copies.

    bf16 parameters (views of one flat buffer) for compute, fp32 master weights and AdamW moments in flat
    buffers, bf16 gradients collected into a flat buffer as autograd finishes each one, and one fused AdamW
    pass that also writes the next step's bf16 weights (`training/flat_master.py`). Same numbers as FSDP2 on one
    rank (tested against it); checkpoints have FSDP2's layout (names, fp32 weights, torch AdamW state), so a
    one-GPU run resumes on N GPUs under FSDP2 and back. N ranks use FSDP2 (`trainer.effective_strategy`).
    """

    name = "master"

    def __init__(self, param_dtype="bf16", reduce_dtype="fp32"):
        super().__init__(param_dtype, reduce_dtype)
        if dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(f"strategy 'master' runs on one rank; this group has {dist.get_world_size()} "
                             "(use fsdp2)")
        self.flat = None

    def wrap(self, model, device):
        from soraflow.training.flat_master import FlatParams

        model = model.to(device=device, dtype=torch.float32)  # init values become the fp32 master weights
        self.flat = flat = FlatParams(model, self.param_dtype)
        index = {name: i for i, name in enumerate(flat.names)}

        def cast_inputs(module, args, kwargs):  # FSDP2's root cast of the floating-point inputs
            cast = lambda t: t.to(self.param_dtype) if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
            return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

        def master_state(module, state_dict, prefix, local_metadata):  # state_dict() reports the fp32 masters
            for name, i in index.items():
                if prefix + name in state_dict:
                    state_dict[prefix + name] = flat.view(flat.master, i)

        def load_master(module, state_dict, prefix, *args):  # load_state_dict() sets the masters, then bf16
            with torch.no_grad():
                for name, i in index.items():
                    src = state_dict.get(prefix + name)
                    dst = flat.view(flat.master, i)
                    if src is not None and dst.data_ptr() != src.data_ptr():
                        dst.copy_(src.full_tensor() if hasattr(src, "full_tensor") else src)

        model.register_forward_pre_hook(cast_inputs, with_kwargs=True)
        model.register_state_dict_post_hook(master_state)
        model.register_load_state_dict_pre_hook(load_master)
        return model

    def build_optimizer(self, model, cfg):
        from soraflow.training.flat_master import FlatAdamW

        return FlatAdamW(self.flat, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def clip_grad_norm(self, model, max_norm):
        # The norm now; the clip coefficient is applied inside the fused update (no separate pass).
        opt = getattr(self, "optimizer", None)
        if opt is None:
            raise RuntimeError("strategy 'master': clip_grad_norm before prepare()")
        return opt.grad_norm(max_norm)

    def prepare(self, model, device, optim):
        model = self.wrap(model, device)
        self.optimizer = self.build_optimizer(model, optim)
        return model, self.optimizer

    def state_dict(self, model, optimizer):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, model, optimizer, state):
        model.load_state_dict(state["model"])  # the pre-hook fills the masters; the bf16 copy follows
        self.flat.sync_compute()
        optimizer.load_state_dict(state["optimizer"])


class ColossalAIStrategy(Strategy):
    """ColossalAI Booster with LowLevelZero (ZeRO-2) or HybridParallel (for SP); optional extra, GPU only.

    Imported only when chosen: colossalai 0.5 pins torch<=2.5.1 and exact transformers/diffusers versions, so it
    lives in the GPU training image (installed there with `pip install --no-deps colossalai==0.5.0`), never on
    CPU machines. `plugin` and `sp_size` come from `parallel.plugin` / `parallel.sp_size`, `max_norm` from
    `optim.grad_clip` (the ZeRO optimizer clips inside its step).
    """

    name = "colossalai"

    def __init__(self, param_dtype="bf16", reduce_dtype="fp32", plugin: str = "zero2", sp_size: int = 1,
                 reduce_bucket_size_in_m: int = 128, max_norm: float = 1.0):
        super().__init__(param_dtype, reduce_dtype)
        try:
            import colossalai  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "strategy 'colossalai' needs colossalai, which is not a dependency of soraflow (0.5 pins "
                "torch<=2.5.1): in the GPU image, pip install --no-deps colossalai==0.5.0"
            ) from exc
        if plugin not in ("zero1", "zero2", "hybrid"):
            raise ValueError(f"parallel.plugin must be zero1, zero2 or hybrid, got {plugin!r}")
        self.plugin_name, self.sp_size, self.bucket_m = plugin, sp_size, reduce_bucket_size_in_m
        self.max_norm = float(max_norm)
        self.booster = None

    def _plugin(self):
        from colossalai.booster.plugin import HybridParallelPlugin, LowLevelZeroPlugin

        precision = dtype_name(self.param_dtype)
        if self.plugin_name in ("zero1", "zero2"):
            return LowLevelZeroPlugin(stage=int(self.plugin_name[-1]), precision=precision,
                                      reduce_bucket_size_in_m=self.bucket_m, overlap_allgather=False,
                                      max_norm=self.max_norm)
        return HybridParallelPlugin(tp_size=1, pp_size=1, sp_size=self.sp_size, zero_stage=2, precision=precision,
                                    max_norm=self.max_norm,
                                    enable_sequence_parallelism=self.sp_size > 1,
                                    sequence_parallelism_mode="ring_attn" if self.sp_size > 1 else None)

    def prepare(self, model, device, optim):
        from colossalai.booster import Booster

        model = model.to(device)
        # torch's fused AdamW: ColossalAI's HybridAdam JIT-builds a C++/CUDA extension (ninja, nvcc) and only
        # pays off with CPU offload, which the recipes do not use; ZeRO wraps whichever optimizer it is given.
        opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                weight_decay=optim.weight_decay, fused=device.type == "cuda")
        self.booster = Booster(plugin=self._plugin())
        model, opt, *_ = self.booster.boost(model, opt)
        return model, opt

    def backward(self, loss, optimizer):
        self.booster.backward(loss, optimizer)

    def clip_grad_norm(self, model, max_norm):
        # The ZeRO optimizer clips inside step() (max_norm is given to the plugin); report no separate norm.
        return torch.tensor(float("nan"))

    def state_dict(self, model, optimizer):
        # Gathered (unsharded) model weights and the ZeRO optimizer's own state dict; DCP writes them as is.
        return {"model": model.unwrap().state_dict(), "optimizer": optimizer.state_dict()}

    def load_state_dict(self, model, optimizer, state):
        model.unwrap().load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def unwrap(self, model):
        return model.unwrap()


STRATEGIES = {"single": SingleDevice, "ddp": DDPStrategy, "fsdp2": FSDP2Strategy, "master": OneRankMasterStrategy,
              "colossalai": ColossalAIStrategy}


def build_strategy(name: str, **kwargs) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    if name not in ("single", "master") and not dist.is_initialized():
        raise RuntimeError(f"strategy {name!r} needs torch.distributed initialised (launch with torchrun/torchx)")
    return STRATEGIES[name](**kwargs)
