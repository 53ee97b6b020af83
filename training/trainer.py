"""The trainer: one loop for vae_train, dit_stage1/2/3 and distill, on any strategy, with checkpoints, recovery
and goodput accounting. What differs per stage (model, objective, extra state, export, samples) lives in
`training/stages.py`.

Launched by torchrun (through torchx, `training/launch.py`); a single process works too. On restart the
trainer resumes from the newest complete checkpoint: model, optimizer, data position, RNG state.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from soraflow.common.atomic import write_text_atomic
from soraflow.common.dtypes import torch_dtype
from soraflow.training.config import TrainConfig
from soraflow.training.strategies import set_lr

log = logging.getLogger("soraflow.train")


def strategy_kwargs(cfg: TrainConfig, strategy: str) -> dict:
    """What the config gives the strategy: its precision, and for ColossalAI the plugin, its SP size and the
    clipping norm (its ZeRO optimizer clips inside step(), so optim.grad_clip must reach it there)."""
    kw = {"param_dtype": cfg.parallel.param_dtype}
    if strategy == "colossalai":
        kw.update(plugin=cfg.parallel.plugin, sp_size=max(1, cfg.parallel.sp_size), max_norm=cfg.optim.grad_clip)
    return kw


# ---- process group ----------------------------------------------------------------------------------------------

def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; a single process needs none of it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def effective_strategy(name: str, world: int, device_type: str) -> str:
    """The strategy a run uses for the recipe's `parallel.strategy` at this world size and device.

    Several processes: the recipe's. One process: DDP has nothing to replicate, so "single" (which keeps DDP's
    fp32 parameters and bf16 autocast); FSDP2 on a GPU becomes "master", FSDP2's precision (bf16 compute, fp32
    master weights) without its one-rank copies; FSDP2 on a CPU becomes "single" (the tiny CPU recipes compute in
    fp32, where all three are the same)."""
    if world > 1 or name not in ("fsdp2", "ddp"):
        return name
    return "master" if name == "fsdp2" and device_type == "cuda" else "single"


def all_mean(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _loader_timing(batch: dict, wait_s: float) -> dict:
    """The loader's part of a step: how long the loop waited for the batch, and the worker seconds its items
    spent decoding and resizing (summed over the batch; workers run them while earlier steps compute)."""
    out = {"data_wait_s": wait_s}
    items = [t for t in (batch.get("timing") or []) if isinstance(t, dict)]
    for key in ("decode_s", "resize_s"):
        if items:
            out[key] = float(sum(t.get(key, 0.0) for t in items))
    return out


# ---- state that goes into a checkpoint -----------------------------------------------------------------------

class TrainState:
    """Everything a resumed run needs: model + optimizer (through the strategy), data position, RNG, step, and the
    loss guard's window (so a resumed run judges spikes against the same recent losses as an uninterrupted one;
    JSON text, because the window's length changes during warm-up and DCP loads tensors only into equal shapes)."""

    def __init__(self, trainer: "Trainer"):
        self.t = trainer

    def state_dict(self) -> dict:
        t = self.t
        out = t.strategy.state_dict(t.model, t.optimizer)
        out["progress"] = {"step": t.step, "epoch": t.loader.epoch}
        out[f"data_rank{t.rank}"] = t.loader.state_dict()
        out[f"rng_rank{t.rank}"] = {"generator": t.generator.get_state(), "torch": torch.get_rng_state()}
        out.update({f"stage_{k}": v for k, v in t.stage.state_dict().items()})
        out["loss_guard"] = json.dumps(t.guard.state_dict())
        return out

    def load_state_dict(self, state: dict) -> None:
        t = self.t
        t.strategy.load_state_dict(t.model, t.optimizer, {"model": state["model"], "optimizer": state["optimizer"]})
        t.step = int(state["progress"]["step"])
        data = state.get(f"data_rank{t.rank}")
        if data is not None:
            t.loader.load_state_dict(data)
        rng = state.get(f"rng_rank{t.rank}")
        if rng is not None:
            t.generator.set_state(rng["generator"])
            torch.set_rng_state(rng["torch"])
        t.stage.load_state_dict({k[len("stage_"):]: v for k, v in state.items() if k.startswith("stage_")})
        t.guard.load_state_dict(json.loads(state["loss_guard"]))


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from soraflow.training.checkpoint import CheckpointManager
        from soraflow.training.data.loader import build_dataloader
        from soraflow.training.goodput import GoodputTracker
        from soraflow.training.recovery import HangWatchdog, LossGuard
        from soraflow.training.stages import build_stage
        from soraflow.training.strategies import build_strategy

        self.cfg = cfg
        self._caller_group = dist.is_initialized()  # a group the caller made is the caller's to destroy
        self.rank, self.world, self.device = init_distributed()
        sp = max(1, cfg.parallel.sp_size)
        if self.world % sp:
            raise ValueError(f"world size {self.world} is not a multiple of parallel.sp_size {sp}")
        # Ranks [k*sp, (k+1)*sp) form SP group k and read the same micro-batch (data-parallel rank k).
        self.sp_size, self.dp_rank, self.dp_world = sp, self.rank // sp, self.world // sp
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.goodput = GoodputTracker(self.run_dir, run_id=cfg.run_id, stage=cfg.stage, recipe=cfg.name,
                                      rank=self.rank)
        with self.goodput.badput("init"):
            dtype = torch_dtype(cfg.parallel.param_dtype)
            self.dtype = dtype
            # The stage decides the model, its objective and its extra state (training/stages.py).
            self.stage = build_stage(cfg, self.device, dtype, self.rank, self.world)
            module = self.stage.build_model()
            strategy = effective_strategy(cfg.parallel.strategy, self.world, self.device.type)
            if cfg.model.fp8:
                # Before the strategy wraps the model (FSDP2 shards the converted linears; their float8
                # all-gather needs that order). The state-dict keys do not change.
                from soraflow.training.parallel.fp8 import convert_to_fp8_training

                convert_to_fp8_training(module, cfg.model.fp8, fsdp_all_gather=strategy == "fsdp2",
                                        emulate=self.device.type != "cuda")
            self.strategy = build_strategy(strategy, **strategy_kwargs(cfg, strategy))
            self.model, self.optimizer = self.strategy.prepare(module, self.device, cfg.optim)
            self.sp_handle = self._setup_sequence_parallel()
            if cfg.model.compile:
                self._compile_model()
            self.loader = build_dataloader(
                cfg.data.table, cfg.data.bucket_config, rank=self.dp_rank, world_size=self.dp_world, seed=cfg.seed,
                num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor,
                pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
                divisor=self.stage.divisor,
            )
            if len(self.loader) == 0:
                raise ValueError(f"data.table {cfg.data.table}: no clip fits data.bucket_config "
                                 f"{ {r: sorted(t) for r, t in cfg.data.bucket_config.items()} } on rank "
                                 f"{self.dp_rank} (too small or too short for every bucket?)")
            # Ranks of one SP group share a batch, so they share the noise/timestep/condition draws too.
            self.generator = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.dp_rank)
            self.step = 0
            self.stage.setup(self)
            self.ckpt = CheckpointManager(cfg.checkpoint.dir, keep_n_latest=cfg.checkpoint.keep_n_latest,
                                          async_save=cfg.checkpoint.async_save,
                                          on_commit=self.goodput.record_checkpoint_committed)
            self.metrics = None
            if self.rank == 0:
                from soraflow.monitoring.metrics import TrainingMetrics

                self.metrics = TrainingMetrics(cfg.run_id, cfg.stage, cfg.name)
                self.metrics.set_build_info()
                if cfg.metrics_port is not None:
                    # bind address: SORAFLOW_METRICS_ADDR (0.0.0.0 in pods), else loopback
                    self.metrics.serve(cfg.metrics_port, rank=self.rank)
            self.guard = LossGuard(cfg.recovery.spike_factor, cfg.recovery.spike_window, cfg.recovery.spike_warmup)
            self.watchdog = HangWatchdog(cfg.recovery.hang_timeout_s, on_hang=self._on_hang)
            self.state = TrainState(self)
            self.resumed_from = self._resume()
            if self.metrics is not None:  # a restarted exporter serves the run's replayed totals at once
                self.metrics.update_from_summary(self.goodput.summary())
        self._write_resolved_config()

    def _compile_model(self) -> None:
        from soraflow.models.mmdit import MMDiT
        from soraflow.training.parallel.mmdit import apply_compile

        model = self.strategy.unwrap(self.model)
        if not isinstance(model, MMDiT):
            raise ValueError(f"model.compile: the {self.cfg.stage} model ({type(model).__name__}) has no compiled "
                             "path; set model.compile=false")
        apply_compile(model)

    def _setup_sequence_parallel(self):
        if self.sp_size == 1:
            return None
        from soraflow.training.parallel.mmdit import apply_sequence_parallel

        groups = [dist.new_group(list(range(k * self.sp_size, (k + 1) * self.sp_size)))
                  for k in range(self.dp_world)]  # every rank must create every group
        return apply_sequence_parallel(self.model, groups[self.dp_rank], mode=self.cfg.parallel.sp_mode)

    # -- resume / rollback ----------------------------------------------------------------------------------------
    def _metadata(self) -> dict:
        return {"dp_size": self.dp_world, "sp_size": self.sp_size, "data_revision": self.loader.sampler.revision,
                "recipe": self.cfg.name,
                "config": self.stage.config_name}

    def _resume(self) -> int | None:
        step = self.ckpt.latest_complete()
        if step is None:
            return None
        self.ckpt.check_resume(self._metadata(), step, reset_data_state=self.cfg.checkpoint.reset_data_state)
        with self.goodput.badput("checkpoint_restore"):
            self.ckpt.load(step, {"train": self.state},
                           reset_data_state=self.cfg.checkpoint.reset_data_state)
        self.goodput.record_resume(step)
        if self.rank == 0:
            log.warning("resumed from %s at step %d", self.cfg.checkpoint.dir, step)
        return step

    def _rollback(self, reason: str) -> None:
        """A non-finite or spiking loss: restore the last checkpoint's model and optimizer, keep the data
        position (so the offending batches are skipped), and count it."""
        step = self.ckpt.latest_complete()
        bad_step = self.step
        if step is None:
            raise RuntimeError(f"loss guard tripped ({reason}) at step {bad_step} and no checkpoint exists")
        # the data position and the guard's window stay where they are: the offending batches are skipped, and
        # the losses seen since the checkpoint are still the recent ones
        data_state, guard = self.loader.state_dict(), copy.deepcopy(self.guard)
        with self.goodput.badput("checkpoint_restore"):
            self.ckpt.load(step, {"train": self.state})
        self.loader.load_state_dict(data_state)
        self.guard = guard
        self.goodput.rollback(reason, from_step=bad_step, to_step=step)
        log.warning("rank %d: %s at step %d, rolled back to step %d", self.rank, reason, bad_step, step)

    def _on_hang(self, seconds: float) -> None:
        self.goodput.hang(seconds)

    # -- the loop -------------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        rollbacks = 0
        staging_ready = False
        last_batch = None
        self.loader.set_epoch(self.loader.epoch)
        it = iter(self.loader)
        if self.step == 0:  # a resumed run has its step-0 numbers (and init weights) already
            if cfg.heldout.export_init:
                self.export_model("init.safetensors", extras=False)
            self._heldout()
        self.watchdog.start()
        self.model.train()
        while self.step < cfg.max_steps:
            t_wait = time.perf_counter()
            with self.goodput.badput("data_loading"):
                it, batch = self._next_batch(it)
            weight = 1.0
            if not batch.get("num_samples"):
                # Every clip of this micro-batch was unreadable (counted by the loader). The step still runs so
                # all ranks stay in lockstep for the collectives: on the last good batch, with zero weight.
                if last_batch is None:
                    raise RuntimeError("the first micro-batch of this rank had no readable clip; check the table")
                batch, weight = last_batch, 0.0
            last_batch = batch
            t0 = time.perf_counter()
            timing = _loader_timing(batch, t0 - t_wait)
            inputs = self.stage.prepare(batch, self.generator)
            with self.strategy.forward_context():
                loss = self.stage.loss(self.model, inputs) * weight
            # Backward is queued before the loss is read: reading it first would drain the GPU between forward
            # and backward every step. A rejected step wastes one backward; its gradients never reach the weights.
            self.strategy.backward(loss, self.optimizer)
            grad_norm = self.strategy.clip_grad_norm(self.model, cfg.optim.grad_clip)
            loss_value = all_mean(float(loss.detach()), self.device)
            verdict = self.guard.check(loss_value)
            if verdict != "ok":
                self.optimizer.zero_grad(set_to_none=True)
                rollbacks += 1
                if rollbacks > cfg.recovery.max_rollbacks:
                    raise RuntimeError(f"loss guard tripped {rollbacks} times ({verdict}); stopping")
                self._rollback(verdict)
                continue
            staging = self.ckpt.wait_staging()  # the last checkpoint's copy must finish before weights change
            if staging > 0:
                self.goodput.record_badput("checkpoint_save", staging)
            set_lr(self.optimizer, cfg.optim.lr_at(self.step))  # a function of the step: nothing to checkpoint
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.strategy.after_optimizer_step(self.model)
            self.stage.after_step(weight)  # e.g. the discriminator's step and the EMA update
            if not staging_ready:
                # Pin the checkpoint staging buffers once the optimizer state exists: a one-off start-up cost
                # (init badput) instead of a stall at the first checkpoint.
                with self.goodput.badput("init"):
                    self.ckpt.prepare_staging({"train": self.state})
                staging_ready = True
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            self.step += 1
            self.goodput.record_step(self.step, seconds, tokens=self.stage.tokens(inputs), flops=self.stage.flops(inputs),
                              loss=loss_value,
                              grad_norm=float(grad_norm), peak_flops=cfg.peak_flops_per_device,
                              peak_memory=torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None,
                              timing={**timing, **self.stage.step_timing()})
            self.watchdog.heartbeat()
            self._chaos_kill()
            self._after_step(loss_value, float(grad_norm), seconds, inputs, batch)
        self.ckpt.wait()
        self.watchdog.stop()
        self.export_model()
        summary = self.goodput.summary()
        if self.rank == 0:
            self.goodput.write_metrics_json()
        self.goodput.close()  # a clean end: the next attempt must not count a failure
        if self.metrics is not None:  # the final numbers; waits SORAFLOW_METRICS_LINGER_S for a last scrape
            self.metrics.finish(self.goodput.summary())
        return summary

    def _next_batch(self, it):
        """(iterator, the next micro-batch); the end of an epoch starts the next one."""
        try:
            return it, next(it)
        except StopIteration:
            self.loader.set_epoch(self.loader.epoch + 1)
            it = iter(self.loader)
            return it, next(it)

    def _after_step(self, loss_value: float, grad_norm: float, seconds: float, inputs, batch) -> None:
        """What runs every so many steps: metrics, the log line, samples, held-out scores, the checkpoint (each
        also at the last step)."""
        cfg = self.cfg
        if self.metrics is not None and self.step % cfg.log_every == 0:
            from soraflow.monitoring.metrics import update_training_metrics

            update_training_metrics(self.metrics, self.goodput.summary())
        if self.rank == 0 and self.step % cfg.log_every == 0:
            log.warning("step %d loss %.5f grad_norm %.3f %.3fs", self.step, loss_value, grad_norm, seconds)
        last = self.step == cfg.max_steps
        every = cfg.samples.every
        if (every > 0 and self.step % every == 0) or last:
            with self.goodput.badput("other"), self.strategy.forward_context():
                self.stage.write_samples(self.model, inputs, batch, self.step)
        h_every = cfg.heldout.every
        if (h_every > 0 and self.step % h_every == 0) or last:
            self._heldout()
        if self.step % cfg.checkpoint.ckpt_every == 0 or last:
            self.save_checkpoint()

    def _heldout(self) -> None:
        """Score the held-out clips at this step (every rank runs it: a sharded model needs all ranks) and
        append the result to heldout.jsonl (rank 0). Counted as badput "other", like writing samples."""
        if not self.cfg.heldout.table:
            return
        with self.goodput.badput("other"), self.strategy.forward_context():
            t0 = time.perf_counter()
            result = self.stage.heldout(self.model)
        if result is None or self.rank != 0:
            return
        line = json.dumps({"step": self.step, "seconds": round(time.perf_counter() - t0, 3), **result})
        with open(self.run_dir / "heldout.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        log.warning("step %d held-out %s", self.step,
                    {k: v for k, v in result.items() if isinstance(v, float)})

    def _chaos_kill(self) -> None:
        """Fault injection for recovery tests: SORAFLOW_CHAOS_KILL="rank:step" SIGKILLs that rank once, right
        after that step, when no marker says it already happened (the marker lives in the run folder).

        Every rank first lets its in-flight async checkpoint commit, so a drill resumes from the newest
        checkpoint before the kill step. (A real crash can also lose a save still in flight; resume then takes
        the newest committed one, one interval older, which made the drill's outcome depend on timing.)"""
        spec = os.environ.get("SORAFLOW_CHAOS_KILL")
        if not spec:
            return
        rank, step = (int(x) for x in spec.split(":"))
        marker = self.run_dir / f".chaos-killed-rank{rank}-step{step}"
        if self.step == step and not marker.exists():
            self.ckpt.wait()
            if self.rank == rank:
                marker.touch()
                os.kill(os.getpid(), 9)

    def save_checkpoint(self) -> None:
        with self.goodput.badput("checkpoint_save") as timer:
            result = self.ckpt.save(self.step, {"train": self.state}, metadata=self._metadata())
            timer.note(result)

    def export_model(self, name: str = "model.safetensors", extras: bool = True) -> Path:
        """Full (unsharded) weights in the official layout, for the next stage's `from_pretrained` (the DiT's
        own weights; the autoencoder's EMA weights for vae_train)."""
        from soraflow.common.safetensors_io import save_safetensors

        state = self.stage.export_state(self.model)
        path = self.run_dir / name
        if self.rank == 0:
            # byte-deterministic: identical tensors give an identical file, and so the same key downstream
            save_safetensors(state, path, metadata={"config": self.stage.config_name, "step": str(self.step),
                                                    "recipe": self.cfg.name, "stage": self.cfg.stage,
                                                    **self.stage.export_metadata()})
            for extra_name, extra in (self.stage.extra_exports() if extras else {}).items():
                save_safetensors(extra, self.run_dir / extra_name)
        if dist.is_initialized():
            dist.barrier()
        return path

    def _write_resolved_config(self) -> None:
        if self.rank == 0:
            write_text_atomic(self.run_dir / "config.json", json.dumps(
                {**self.cfg.to_dict(), "fingerprint": self.cfg.fingerprint()}, indent=2, default=str))

    def close(self) -> None:
        self.watchdog.stop()
        self.ckpt.wait()
        if dist.is_initialized() and not self._caller_group:
            dist.destroy_process_group()
