"""The training configuration tree. Field names keep Open-Sora's (`bucket_config`, `grad_ckpt_settings`,
`sp_size`, `ckpt_every`, `keep_n_latest`, `lr`, ...) so any value can be traced to the upstream config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from training.strategies import OptimConfig


@dataclass
class ModelSpec:
    config: str = "tiny"  # a name from models.mmdit.CONFIGS
    overrides: dict = field(default_factory=dict)
    from_pretrained: str | None = None  # an Open-Sora-layout checkpoint (previous stage's output)
    from_flux: str | None = None  # a FLUX-layout checkpoint (stage 1 init)
    grad_ckpt_settings: tuple[int, int] | None = None
    # torch.compile each block and the final layer (fused norms, modulation, RoPE, gating); GPU recipes set it.
    compile: bool = False
    # Key prefixes left at their fresh init when loading `from_pretrained` (the DC-AE adaptation, spec §B.4:
    # img_in, cond_in and final_layer.linear change shape with the latent space); every other key loads strictly.
    reinit: tuple[str, ...] = ()


@dataclass
class AESpec:
    kind: str = "hunyuan"  # "hunyuan" | "dcae"
    path: str | None = None  # weights; None with tiny=True builds a seeded random tiny AE
    tiny: bool = True
    # a named architecture (models.hunyuan_vae.config.NAMED_CONFIGS) for the autoencoder an AE stage trains;
    # stages that load weights take the name the export's metadata carries
    config: str | None = None


@dataclass
class TextSpec:
    t5: str | None = None  # local folders; None with tiny=True uses the generated tiny encoders
    clip: str | None = None
    tiny: bool = True
    dropout_ratio: float = math.sqrt(0.1)  # T5 and CLIP each dropped with this p (both ~10%), spec §C.3
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
    """Video DC-AE training (stage vae_train, spec §B.3). `ae` gives the architecture (kind "dcae") and optional
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
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """Dotted-key overrides, e.g. {"optim.lr": 1e-5, "max_steps": 10}; unknown keys are an error."""
    for key, value in overrides.items():
        target = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if not hasattr(target, p):
                raise KeyError(f"unknown config field {key!r} (no {p!r} in {type(target).__name__})")
            target = getattr(target, p)
        if not hasattr(target, parts[-1]):
            raise KeyError(f"unknown config field {key!r} (no {parts[-1]!r} in {type(target).__name__})")
        setattr(target, parts[-1], value)
    return cfg
