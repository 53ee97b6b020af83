"""The training configuration tree. Field names keep Open-Sora's (`bucket_config`, `grad_ckpt_settings`,
`sp_size`, `ckpt_every`, `keep_n_latest`, `lr`, ...) so any value can be traced to the upstream config."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field

from soraflow.common.dtypes import DTYPE_NAMES
from soraflow.common.stages import STAGES
from soraflow.training.optim import OptimConfig


@dataclass
class ModelSpec:
    config: str = "tiny"  # a name from soraflow.models.mmdit.CONFIGS
    overrides: dict = field(default_factory=dict)
    from_pretrained: str | None = None  # an Open-Sora-layout checkpoint (previous stage's output)
    from_flux: str | None = None  # a FLUX-layout checkpoint (stage 1 init)
    grad_ckpt_settings: tuple[int, int] | None = None
    # torch.compile each block and the final layer (fused norms, modulation, RoPE, gating); GPU recipes set it.
    compile: bool = False
    # FP8 training of the blocks' big linears (torchao float8): "" (off), "tensorwise" or "rowwise".
    fp8: str = ""
    # Key prefixes left at their fresh init when loading `from_pretrained` (the DC-AE adaptation,
    # docs/models.md#dit-on-dc-ae-latents-distill:
    # img_in, cond_in and final_layer.linear change shape with the latent space); every other key loads strictly.
    reinit: tuple[str, ...] = ()


@dataclass
class AESpec:
    kind: str = "hunyuan"  # "hunyuan" | "dcae"
    path: str | None = None  # weights; None with tiny=True builds a seeded random tiny AE
    tiny: bool = True
    # a named architecture (soraflow.models.hunyuan_vae.config.NAMED_CONFIGS) for the autoencoder an AE stage trains;
    # stages that load weights take the name the export's metadata carries
    config: str | None = None


@dataclass
class TextSpec:
    t5: str | None = None  # local folders; None with tiny=True uses the generated tiny encoders
    clip: str | None = None
    tiny: bool = True
    # T5 and CLIP each dropped with this p (both ~10%), docs/models.md#condition-dropout
    dropout_ratio: float = math.sqrt(0.1)
    # T5 tokens per caption (padded): 512 as released; the tiny CPU recipes use fewer, since the DiT attends
    # over every padded text token and their captions are short
    t5_max_length: int = 512


@dataclass
class DataSpec:
    table: str = ""
    bucket_config: dict = field(default_factory=dict)
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = True


@dataclass
class ParallelSpec:
    strategy: str = "fsdp2"  # fsdp2 | ddp | single | colossalai
    param_dtype: str = "bf16"
    sp_size: int = 1
    sp_mode: str = "ring"  # ring | ulysses
    plugin: str = "zero2"  # colossalai only (Open-Sora's `plugin`): zero1 | zero2 | hybrid (ZeRO-2 + SP groups)


@dataclass
class CheckpointSpec:
    dir: str = "runs/checkpoints"
    ckpt_every: int = 100
    keep_n_latest: int = 20
    async_save: bool = True
    reset_data_state: bool = False  # allow resuming with another DP size / data revision


@dataclass
class RecoverySpec:
    spike_factor: float = 10.0  # loss > factor x running median -> roll back and skip the batch
    spike_window: int = 50
    spike_warmup: int = 20
    hang_timeout_s: float = 1800.0
    max_rollbacks: int = 3


@dataclass
class VAESpec:
    """Video DC-AE training (stage vae_train, docs/models.md#autoencoder-training). `ae` gives the architecture (kind
    "dcae") and optional
    init weights; this holds the losses, the discriminator and the EMA."""

    perceptual_path: str | None = None  # TorchScript (x, x_hat) [N,3,H,W] -> per-frame distance, e.g. LPIPS-VGG16
    perceptual_weight: float = 0.5
    # filled at start-up so the resolved recipe records it: "on: <path>" or "off: ..." (no network given)
    perceptual_term: str = ""
    phase: int = 1  # 1: L1 + perceptual; 2: + hinge GAN with the adaptive weight
    disc_weight: float = 0.05
    disc_start: int = 0  # step from which phase 2 trains the generator against the discriminator
    disc_lr: float = 1e-4
    disc_ndf: int = 64
    disc_layers: int = 5
    ema_decay: float = 0.99
    mixed_image_ratio: float = 0.2  # share of image (first-frame) micro-batches, upstream "mixed_video_image"
    align_teacher_path: str | None = None  # frozen TorchScript feature teacher: [N,3,H,W] -> [N,D,h,w]
    align_weight: float = 1.0  # unverified: the paper gives no weight for its DINOv2 latent alignment
    # KL-VAE (hunyuan_vae_train): weight of the posterior's KL to N(0, I), averaged over latent elements
    kl_weight: float = 1e-4
    # KL-VAE trained from scratch: the posterior log-variance it starts with (the logvar half of quant_conv is
    # set to this constant: zero weights, this bias). None keeps the default init, whose logvar is about 0, i.e.
    # posterior samples with std about 1 around means of about 1: noise that hides most of what the latent
    # carries until Adam has walked the bias down by ~lr per step (docs/learning.md)
    logvar_init: float | None = None
    # after training, fold a per-channel standardisation of the latents into the 1x1x1 quant convs, so the
    # scaled latents the DiT sees have zero mean and unit variance on the training clips (batches to measure)
    standardise_batches: int = 0


@dataclass
class SampleSpec:
    """Sample videos written every `every` steps (0 = only at the end): DiT stages generate, vae_train
    reconstructs the current batch."""

    every: int = 0
    prompt: str = "a red kite over a beach"
    num_frames: int = 9
    height: int = 64
    width: int = 64
    steps: int = 4
    cond_type: str = "t2v"
    seed: int = 0


@dataclass
class HeldoutSpec:
    """Held-out evaluation during training (`training/heldout.py`): at step 0, every `every` steps and at the
    end, on the first `num_clips` clips of `table` read at num_frames x height x width. Results go to
    `heldout.jsonl` in the run folder. DiT stages score the flow-matching loss on fixed timesteps and noise,
    autoencoder stages the reconstruction PSNR of their EMA weights."""

    table: str = ""  # a held-out clip table; empty: no held-out evaluation
    every: int = 0  # 0: only at step 0 and at the end
    num_clips: int = 8
    num_frames: int = 9
    height: int = 64
    width: int = 64
    # also export the network as it was at step 0 (`init.safetensors`): what "the same network at
    # initialisation" means for the eval step's comparisons (small models only: it is a full copy)
    export_init: bool = False


@dataclass
class TrainConfig:
    name: str = "custom"
    stage: str = "dit_stage1"
    model: ModelSpec = field(default_factory=ModelSpec)
    ae: AESpec = field(default_factory=AESpec)
    text: TextSpec = field(default_factory=TextSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    recovery: RecoverySpec = field(default_factory=RecoverySpec)
    vae: VAESpec = field(default_factory=VAESpec)
    samples: SampleSpec = field(default_factory=SampleSpec)
    heldout: HeldoutSpec = field(default_factory=HeldoutSpec)
    # condition mix for I2V-capable stages, e.g. {"t2v": 1, "i2v_head": 5, "i2v_loop": 1, "i2v_tail": 1}
    condition_config: dict | None = None
    max_steps: int = 100
    seed: int = 42
    log_every: int = 1
    run_dir: str = "runs/run"
    run_id: str = "local"
    metrics_port: int | None = None  # rank-0 Prometheus endpoint
    peak_flops_per_device: float | None = None  # for MFU; None = the device's bf16 dense peak if known

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A digest of the config as JSON carries it (int keys become strings first, so a config rebuilt from
        JSON in a worker has the launcher's fingerprint)."""
        canonical = json.loads(json.dumps(self.to_dict(), default=str))
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A recipe + overrides that cannot run; the message names every bad key path and what it expects."""


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_value(path: str, value, hint):
    """`value` converted to what the field `hint` holds, or a ConfigError naming `path`. Ints must be whole
    numbers (2.5 is not a size), floats take ints, strings are never numbers, `None` only where allowed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for alt in (a for a in args if a is not type(None)):
            try:
                return _check_value(path, value, alt)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expects {hint}, got {value!r}")
    if hint is typing.Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expects true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expects an integer, got {value!r} ({type(value).__name__})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expects a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expects a string, got {value!r} ({type(value).__name__})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expects {len(args)} values, got {len(value)}")
        return tuple(_check_value(f"{path}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expects a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"{path}: is a section; set its fields ({', '.join(f.name for f in dataclasses.fields(hint))})")
    return value


def _unknown(path: str, name: str, obj) -> ConfigError:
    known = [f.name for f in dataclasses.fields(obj)]
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {path.rsplit('.', 1)[0] + '.' if '.' in path else ''}{near[0]}?" if near else ""
    return ConfigError(f"unknown config key {path!r} ({type(obj).__name__} has {', '.join(known)}){hint}")


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """Dotted-key overrides, e.g. {"optim.lr": 1e-5, "max_steps": 10}, each checked against the field's type;
    an unknown key is a ConfigError with the nearest known name. Every bad override is reported at once."""
    problems = []
    for key, value in overrides.items():
        try:
            target = cfg
            parts = key.split(".")
            for i, p in enumerate(parts[:-1]):
                if not dataclasses.is_dataclass(target) or p not in {f.name for f in dataclasses.fields(target)}:
                    raise _unknown(".".join(parts[: i + 1]), p, target)
                target = getattr(target, p)
            if not dataclasses.is_dataclass(target) or parts[-1] not in {f.name for f in dataclasses.fields(target)}:
                raise _unknown(key, parts[-1], target)
            setattr(target, parts[-1], _check_value(key, value, _hints(type(target))[parts[-1]]))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "invalid overrides:\n  " + "\n  ".join(problems))
    return cfg


def _check_types(obj, prefix: str = "") -> list[str]:
    """Every field of the tree against its declared type (recipes are code too)."""
    problems = []
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            problems += _check_types(value, path + ".")
            continue
        try:
            _check_value(path, value, _hints(type(obj))[f.name])
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


STRATEGIES = ("fsdp2", "ddp", "single", "master", "colossalai")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Types, ranges and choices of the whole tree; all problems in one ConfigError, each with its key path."""
    problems = _check_types(cfg)
    if problems:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(problems))

    def need(ok: bool, msg: str):
        if not ok:
            problems.append(msg)

    need(cfg.stage in STAGES, f"stage: {cfg.stage!r} is not one of {', '.join(STAGES)}")
    need(cfg.max_steps >= 0, f"max_steps: must be >= 0, got {cfg.max_steps}")
    need(cfg.log_every >= 1, f"log_every: must be >= 1, got {cfg.log_every}")
    o = cfg.optim
    need(o.lr > 0, f"optim.lr: must be > 0, got {o.lr}")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas: each must be in [0, 1), got {o.betas}")
    need(o.eps > 0, f"optim.eps: must be > 0, got {o.eps}")
    need(o.weight_decay >= 0, f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    need(o.grad_clip >= 0, f"optim.grad_clip: must be >= 0 (0 = off), got {o.grad_clip}")
    need(o.warmup_steps >= 0, f"optim.warmup_steps: must be >= 0, got {o.warmup_steps}")
    need(o.warmup_start_lr >= 0, f"optim.warmup_start_lr: must be >= 0, got {o.warmup_start_lr}")
    steps = [m[0] for m in o.lr_milestones]
    need(steps == sorted(set(steps)) and all(s > 0 for s in steps) and all(m[1] > 0 for m in o.lr_milestones),
         f"optim.lr_milestones: (step, lr) pairs with increasing steps > 0 and lr > 0, got {o.lr_milestones}")
    par = cfg.parallel
    need(par.strategy in STRATEGIES, f"parallel.strategy: {par.strategy!r} is not one of {', '.join(STRATEGIES)}")
    need(par.param_dtype in DTYPE_NAMES, f"parallel.param_dtype: {par.param_dtype!r} is not {'/'.join(DTYPE_NAMES)}")
    need(par.sp_size >= 1, f"parallel.sp_size: must be >= 1, got {par.sp_size}")
    need(par.sp_mode in ("ring", "ulysses"), f"parallel.sp_mode: {par.sp_mode!r} is not ring or ulysses")
    need(par.plugin in ("zero1", "zero2", "hybrid"), f"parallel.plugin: {par.plugin!r} is not zero1, zero2 or hybrid")
    need(par.strategy != "colossalai" or par.sp_size == 1 or par.plugin == "hybrid",
         f"parallel.sp_size={par.sp_size} with colossalai needs parallel.plugin=hybrid (ZeRO plugins have no SP groups)")
    ck = cfg.checkpoint
    need(ck.ckpt_every >= 1, f"checkpoint.ckpt_every: must be >= 1, got {ck.ckpt_every}")
    need(ck.keep_n_latest >= 1, f"checkpoint.keep_n_latest: must be >= 1, got {ck.keep_n_latest}")
    need(cfg.ae.kind in ("hunyuan", "dcae"), f"ae.kind: {cfg.ae.kind!r} is not hunyuan or dcae")
    need(cfg.model.fp8 in ("", "tensorwise", "rowwise"), f"model.fp8: {cfg.model.fp8!r} is not '', tensorwise or rowwise")
    need(cfg.data.num_workers >= 0, f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    need(0 <= cfg.text.dropout_ratio <= 1, f"text.dropout_ratio: must be in [0, 1], got {cfg.text.dropout_ratio}")
    need(cfg.vae.phase in (1, 2), f"vae.phase: must be 1 or 2, got {cfg.vae.phase}")
    need(0 <= cfg.vae.ema_decay < 1, f"vae.ema_decay: must be in [0, 1), got {cfg.vae.ema_decay}")
    need(cfg.vae.kl_weight >= 0, f"vae.kl_weight: must be >= 0, got {cfg.vae.kl_weight}")
    need(cfg.vae.logvar_init is None or -30 <= cfg.vae.logvar_init <= 20,
         f"vae.logvar_init: must be in [-30, 20] (the posterior's logvar clamp), got {cfg.vae.logvar_init}")
    if cfg.condition_config is not None:
        need(all(isinstance(v, (int, float)) and v >= 0 for v in cfg.condition_config.values())
             and sum(cfg.condition_config.values()) > 0,
             f"condition_config: non-negative weights with a positive sum, got {cfg.condition_config}")
    if problems:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(problems))
    return cfg


def resolve(recipe: str, overrides: dict | None = None, *, run_dir: str | None = None) -> TrainConfig:
    """The one resolved config of a run: the recipe, its run folder, the overrides, then `validate`. The launcher
    calls this in the parent process, before any worker or cluster job starts; workers get the result."""
    from soraflow.training.recipes import get_recipe

    cfg = get_recipe(recipe)
    if run_dir is not None:
        cfg.run_dir = run_dir
        cfg.checkpoint.dir = f"{run_dir}/checkpoints"
    apply_overrides(cfg, dict(overrides or {}))
    return validate(cfg)


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _bucket_config_from_json(raw: dict) -> dict:
    """JSON turns the frame-count keys of `bucket_config` into strings and its (prob, batch size) tuples into
    lists; the recipes' own form is int keys and tuples."""
    return {str(res): {int(t): _tuples(v) for t, v in lengths.items()} for res, lengths in raw.items()}


def from_dict(data: dict, cls=None):
    """A TrainConfig (or a section) rebuilt from `to_dict()` output, types checked on the way."""
    cls = cls or TrainConfig
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if f.name == "bucket_config" and isinstance(value, dict):
            value = _bucket_config_from_json(value)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[f.name] = from_dict(value, hint)
        else:
            kwargs[f.name] = _check_value(f.name, value, hint)
    extra = set(data) - {f.name for f in dataclasses.fields(cls)} - {"fingerprint"}
    if extra:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(extra)}")
    return cls(**kwargs)
