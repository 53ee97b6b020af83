"""Named training recipes: one function per stage x hardware (torchtitan's golden-config rule).

The hardware recipes copy Open-Sora's shipped configs (spec §E.2), whose batch sizes were searched on H200
141 GB; they OOM on 80 GB H100s (Open-Sora#814) and must be re-tuned there. The `tiny-cpu-*` recipes run the
same code on a 2-core machine with tiny random models and the generated sample videos.
"""

from __future__ import annotations

import copy
import difflib
from typing import Callable

from soraflow.training.config import (
    AESpec,
    RecoverySpec,
    CheckpointSpec,
    DataSpec,
    HeldoutSpec,
    ModelSpec,
    ParallelSpec,
    SampleSpec,
    TextSpec,
    TrainConfig,
    VAESpec,
)
from soraflow.training.optim import OptimConfig

I2V_MIX = {"t2v": 1, "i2v_head": 5, "i2v_loop": 1, "i2v_tail": 1}
DISTILL_MIX = {"t2v": 1, "i2v_head": 7}  # I2V first: it adapts faster to the new latent space (spec §B.4)
DISTILL_REINIT = ("img_in", "cond_in", "final_layer.linear")


def _frames(lo: int, hi: int, value: tuple) -> dict:
    return {t: value for t in range(lo, hi + 1, 4)}


def bucket_256px(img: int, b33: int, b65: int, b97: int, b129: int, start_97: int = 69) -> dict:
    return {1: (1.0, img), **_frames(5, 33, (1.0, b33)), **_frames(37, 65, (1.0, b65)),
            **_frames(start_97, 97, (1.0, b97)), **_frames(101, 129, (1.0, b129))}


def stage1_256px_h200x8() -> TrainConfig:
    """Paper stage 1 (`stage1.py`): 256px text-to-video from FLUX, ZeRO-2 DP, cond_in off."""
    return TrainConfig(
        name="stage1-256px-h200x8", stage="dit_stage1",
        model=ModelSpec("opensora2-11b", {"cond_embed": False}, grad_ckpt_settings=(8, 100), compile=True),
        ae=AESpec("hunyuan", path="ckpts/hunyuan_vae.safetensors", tiny=False),
        text=TextSpec("ckpts/google/t5-v1_1-xxl", "ckpts/openai/clip-vit-large-patch14", tiny=False),
        data=DataSpec(bucket_config={"256px": bucket_256px(45, 12, 6, 4, 3), "768px": {1: (0.5, 13)},
                                     "1024px": {1: (0.5, 7)}}, num_workers=12),
        optim=OptimConfig(lr=5e-5, eps=1e-15), parallel=ParallelSpec("fsdp2", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=100, keep_n_latest=20), max_steps=85_000,
    )


def stage2_256px_i2v_h200x8() -> TrainConfig:
    """Paper stage 2 (`stage1_i2v.py`): 256px text/image-to-video, cond_in on, the T/I2V condition mix."""
    cfg = stage1_256px_h200x8()
    cfg.name, cfg.stage = "stage2-256px-i2v-h200x8", "dit_stage2"
    cfg.model = ModelSpec("opensora2-11b", grad_ckpt_settings=(8, 100), compile=True)
    cfg.optim = OptimConfig(lr=1e-5, eps=1e-15)
    cfg.condition_config = dict(I2V_MIX)
    cfg.max_steps = 13_000
    return cfg


def stage3_768px_sp4_h200x8() -> TrainConfig:
    """Paper stage 3 (`stage2_i2v.py`): 768px T/I2V with sequence parallelism 4, every block checkpointed.
    lr: the config inherits 5e-5, the paper says 1e-5; we follow the paper (1e-5)."""
    cfg = stage2_256px_i2v_h200x8()
    cfg.name, cfg.stage = "stage3-768px-sp4-h200x8", "dit_stage3"
    cfg.model.grad_ckpt_settings = (100, 100)
    cfg.data.bucket_config = {
        "256px": bucket_256px(195, 80, 40, 28, 23),
        "768px": {1: (0.5, 38), **_frames(5, 33, (0.5, 10)), **_frames(37, 65, (0.5, 5)),
                  **_frames(69, 97, (0.5, 3)), **_frames(101, 129, (0.5, 2))},
    }
    cfg.parallel = ParallelSpec("fsdp2", "bf16", sp_size=4, sp_mode="ring")
    cfg.optim = OptimConfig(lr=1e-5, eps=1e-15)
    return cfg


def distill_768px_dcae_h200x8() -> TrainConfig:
    """DC-AE adaptation (`high_compression.py`, spec §B.4): the patch-1 MMDiT on Video DC-AE latents, from the
    stage-3 weights with img_in, cond_in and final_layer.linear re-initialised; I2V-first mix; lr 3e-5.
    Upstream ran 17K iterations up to 33 frames, then 8K up to 128; this recipe uses the config's full bucket
    table for 25K steps (restrict the buckets with an override to reproduce the first phase)."""
    return TrainConfig(
        name="distill-768px-dcae-h200x8", stage="distill",
        model=ModelSpec("opensora2-hc", grad_ckpt_settings=(100, 100), reinit=DISTILL_REINIT, compile=True),
        ae=AESpec("dcae", path="ckpts/F32T4C128_AE.safetensors", tiny=False),
        text=TextSpec("ckpts/google/t5-v1_1-xxl", "ckpts/openai/clip-vit-large-patch14", tiny=False),
        data=DataSpec(bucket_config={"768px": {1: (1.0, 20), **_frames(16, 32, (1.0, 8)), **_frames(36, 64, (1.0, 4)),
                                               **_frames(68, 96, (1.0, 3)), **_frames(100, 128, (1.0, 2))}},
                      num_workers=12),
        optim=OptimConfig(lr=3e-5, eps=1e-15), parallel=ParallelSpec("fsdp2", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=100, keep_n_latest=20), condition_config=dict(DISTILL_MIX),
        samples=SampleSpec(every=1000, num_frames=32, height=768, width=768, steps=30, cond_type="i2v_head"),
        max_steps=25_000,
    )


def vae_dcae_256px_h200x8() -> TrainConfig:
    """Video DC-AE phase 1 (`configs/vae/train/video_dc_ae.py`, spec §B.3): 32-frame 256px clips, local batch
    1 on 8 GPUs, L1 + 0.5·perceptual, EMA 0.99, 20% image micro-batches. Optimizer: the repo config's
    AdamW β=(0.9, 0.98), ε=1e-8 (the paper says (0.9, 0.999), 1e-15), lr 5e-5, no weight decay, clip 1.0.
    Needs vae.perceptual_path (an LPIPS-VGG16 TorchScript) for the paper's loss."""
    return TrainConfig(
        name="vae-dcae-256px-h200x8", stage="vae_train",
        ae=AESpec("dcae", tiny=False),
        data=DataSpec(bucket_config={"256px": {32: (1.0, 1)}}, num_workers=12),
        optim=OptimConfig(lr=5e-5, betas=(0.9, 0.98), eps=1e-8), parallel=ParallelSpec("ddp", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=1000, keep_n_latest=5),
        vae=VAESpec(phase=1), samples=SampleSpec(every=5000),
        max_steps=250_000,
    )


def vae_dcae_256px_disc_h200x8() -> TrainConfig:
    """Video DC-AE phase 2 (`video_dc_ae_disc.py`): + hinge GAN, disc_weight 0.05 with the adaptive weight,
    discriminator lr 1e-4, from step 0; initialise from phase 1 with ae.path."""
    cfg = vae_dcae_256px_h200x8()
    cfg.name = "vae-dcae-256px-disc-h200x8"
    cfg.vae = VAESpec(phase=2, disc_start=0, disc_weight=0.05, disc_lr=1e-4)
    cfg.max_steps = 200_000
    return cfg


def h100x8(make: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    """The H200 recipe with every bucket batch halved (at least 1) to fit 80 GB. Inferred, not measured:
    Open-Sora searched batch sizes on H200 only and reports OOM on 80 GB cards (#814)."""

    def recipe() -> TrainConfig:
        cfg = make()
        cfg.name = cfg.name.replace("h200x8", "h100x8")
        cfg.data.bucket_config = {
            res: {t: (v[0], max(1, v[1] // 2)) for t, v in table.items()}
            for res, table in cfg.data.bucket_config.items()
        }
        return cfg

    recipe.__doc__ = f"{make.__name__} with halved batch sizes for H100 80 GB (inferred)."
    return recipe


def hunyuan_vae_256px_h200x8() -> TrainConfig:
    """The HunyuanVideo VAE architecture (4x8x8, 16 channels) trained or fine-tuned (ae.path) on 17-frame 256px
    clips: L1 + KL (weight 1e-4 per latent element), EMA 0.99, 20% image micro-batches, DDP. Not an Open-Sora
    recipe (Open-Sora uses the released HunyuanVideo VAE frozen): for pipelines without those weights."""
    return TrainConfig(
        name="hunyuan-vae-256px-h200x8", stage="hunyuan_vae_train",
        ae=AESpec("hunyuan", tiny=False),
        data=DataSpec(bucket_config={"256px": {17: (1.0, 1)}}, num_workers=12),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.98), eps=1e-8), parallel=ParallelSpec("ddp", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=1000, keep_n_latest=5),
        vae=VAESpec(phase=1, standardise_batches=64), samples=SampleSpec(every=5000), max_steps=100_000,
    )


# ---- tiny CPU recipes: same code, tiny models, the generated sample videos -------------------------------------
# Sized so the whole `make demo` (2 cores) learns measurably in its budget: every stage is scored on the split
# step's held-out clips at step 0 and at the end (heldout.*), the same clips at the same size for stages 1-3, so
# stage N's start equals stage N-1's end.

TINY_BUCKETS = {"64px": {9: (1.0, 4)}}
TINY_HELDOUT = HeldoutSpec(every=0, num_clips=6, num_frames=9, height=64, width=64, export_init=True)


def tiny_cpu_stage1() -> TrainConfig:
    return TrainConfig(
        name="tiny-cpu-stage1", stage="dit_stage1",
        model=ModelSpec("tiny", {"cond_embed": False}, grad_ckpt_settings=(1, 1)),
        ae=AESpec("hunyuan", tiny=True), text=TextSpec(tiny=True, t5_max_length=32),
        data=DataSpec(bucket_config=copy.deepcopy(TINY_BUCKETS), num_workers=0, pin_memory=False),
        optim=OptimConfig(lr=1e-3, eps=1e-8), parallel=ParallelSpec("fsdp2", "fp32"),
        checkpoint=CheckpointSpec(ckpt_every=50, keep_n_latest=2), max_steps=120,
        samples=SampleSpec(every=0, num_frames=9, height=64, width=64, steps=8),
        heldout=copy.deepcopy(TINY_HELDOUT), log_every=10,
        peak_flops_per_device=1e11,  # nominal CPU peak, only so MFU is defined in the local run
    )


def tiny_cpu_stage2() -> TrainConfig:
    cfg = tiny_cpu_stage1()
    cfg.name, cfg.stage = "tiny-cpu-stage2", "dit_stage2"
    cfg.model = ModelSpec("tiny", grad_ckpt_settings=(1, 1))
    cfg.condition_config = dict(I2V_MIX)
    cfg.samples.cond_type = "i2v_head"
    cfg.max_steps = 60
    return cfg


def tiny_cpu_stage3() -> TrainConfig:
    cfg = tiny_cpu_stage2()
    cfg.name, cfg.stage = "tiny-cpu-stage3", "dit_stage3"
    cfg.model.grad_ckpt_settings = (100, 100)
    # like the paper's stage 3 (768px and 256px buckets): the higher resolution keeps half its clips, the rest
    # train at the stage-1/2 size (training at 96px only made the 64px held-out loss worse: 0.448 -> 0.465)
    cfg.data.bucket_config = {"96px": {9: (0.5, 2)}, "64px": {9: (1.0, 4)}}
    cfg.max_steps = 80
    return cfg


def tiny_cpu_distill() -> TrainConfig:
    """The tiny patch-1 model on tiny DC-AE latents (8 channels, 32x spatial, 4x time), from tiny-cpu-stage3."""
    cfg = tiny_cpu_stage3()
    cfg.name, cfg.stage = "tiny-cpu-distill", "distill"
    cfg.model = ModelSpec("tiny-hc", grad_ckpt_settings=(1, 1), reinit=DISTILL_REINIT)
    cfg.ae = AESpec("dcae", tiny=True)
    cfg.condition_config = dict(DISTILL_MIX)
    cfg.data.bucket_config = {"64px": {8: (1.0, 4)}}
    cfg.samples = SampleSpec(every=0, num_frames=8, height=64, width=64, steps=8, cond_type="i2v_head")
    cfg.heldout.num_frames = 8
    cfg.max_steps = 80
    return cfg


def tiny_cpu_vae() -> TrainConfig:
    """The tiny DC-AE: L1 (no perceptual network on CPU), then the GAN phase with a small discriminator for the
    last steps; EMA 0.99; 20% image micro-batches."""
    return TrainConfig(
        name="tiny-cpu-vae", stage="vae_train",
        ae=AESpec("dcae", tiny=True),
        data=DataSpec(bucket_config={"64px": {8: (1.0, 4)}}, num_workers=0, pin_memory=False),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.98), eps=1e-8), parallel=ParallelSpec("ddp", "fp32"),
        checkpoint=CheckpointSpec(ckpt_every=40, keep_n_latest=2),
        vae=VAESpec(phase=2, disc_start=190, disc_ndf=8, disc_layers=3, disc_lr=1e-3, ema_decay=0.95,
                    standardise_batches=20),
        samples=SampleSpec(every=0), max_steps=200, log_every=25,
        heldout=HeldoutSpec(num_clips=6, num_frames=8, height=64, width=64, export_init=True),
    )


def tiny_cpu_hunyuan_vae() -> TrainConfig:
    """The tiny HunyuanVideo-architecture VAE (4x8x8, 16 channels) that DiT stages 1-3 train on: L1 + KL, EMA,
    the latent standardisation folded in at export (so the DiT sees unit-variance latents).

    Default posterior init and KL 1e-4: its trained latents are mostly posterior noise and the decoder learns
    to ignore them (docs/learning.md). `vae.logvar_init=-6` with `vae.kl_weight=1e-6` fixes that (14.5 dB
    held-out instead of 13.0 in these 200 steps), but the DiT stages trained on those more informative latents
    then sample worse than their initialisation by the fd proxy in the demo's budget, so the demo keeps this
    objective until the DiT schedules are retuned for it. Either way the 22 dB target is not met (a per-block
    PCA with 16 components reaches 23.3 dB)."""
    return TrainConfig(
        name="tiny-cpu-hunyuan-vae", stage="hunyuan_vae_train",
        ae=AESpec("hunyuan", tiny=True, config="hunyuan-vae-tiny"),
        data=DataSpec(bucket_config={"64px": {9: (1.0, 2)}}, num_workers=0, pin_memory=False),
        optim=OptimConfig(lr=2e-3, betas=(0.9, 0.98), eps=1e-8), parallel=ParallelSpec("ddp", "fp32"),
        # a checkpoint every 40 steps: a loss spike (lr 4e-3 spiked at step 96) rolls back instead of failing
        checkpoint=CheckpointSpec(ckpt_every=40, keep_n_latest=2),
        vae=VAESpec(phase=1, ema_decay=0.95, standardise_batches=20),
        samples=SampleSpec(every=0), max_steps=200, log_every=20,
        heldout=HeldoutSpec(num_clips=6, num_frames=9, height=64, width=64, export_init=True),
    )


# ---- one-GPU demo recipes (`soraflow run --profile gpu`): the same DAG on one 80-141 GB GPU in minutes ---------
# The generated sample clips are 144 x 256 at 24 fps, 72 frames (the "192px" 16:9 bucket at their native size).
# Models: a half-width HunyuanVideo VAE (62M, 4x8x8, 16 channels) that stages 1-3 train on, the full-width Video
# DC-AE (459M, f32t4c128) for distill, a 351M MMDiT (`gpu-demo`). Text: the generated tiny T5/CLIP (nothing is
# downloaded on the GPU machine). Every stage is scored on 6 held-out clips at 33 (DC-AE: 32) x 128 x 256; the
# DiT stages share that view, so the hand-off checks hold here too. Step counts fill a ~9 min run on an H200
# (benchmarks/demo-gpu-profile_h200_*.json has the measured figures).

GPU_HELDOUT = HeldoutSpec(every=100, num_clips=6, num_frames=33, height=128, width=256, export_init=True)
GPU_TEXT = TextSpec(tiny=True, t5_max_length=32)
GPU_WORKERS = 6
# Absolute quality bars for the eval's held-out PSNR checks (targets, not gates), by the recipe that trained the
# autoencoder; recipes not named here get soraflow.components.eval.learning's defaults (the CPU demo's bars).
PSNR_TARGETS = {"gpu-demo-hunyuan-vae": 28.0, "gpu-demo-vae": 24.0}


def gpu_demo_hunyuan_vae() -> TrainConfig:
    """The stage-1-3 autoencoder of the GPU demo: the HunyuanVideo VAE module tree at half width, L1 + KL on
    17-frame clips at their native 144 x 256, EMA, latent standardisation folded in at export."""
    return TrainConfig(
        name="gpu-demo-hunyuan-vae", stage="hunyuan_vae_train",
        ae=AESpec("hunyuan", tiny=False, config="hunyuan-vae-half"),
        data=DataSpec(bucket_config={"192px": {17: (1.0, 4)}}, num_workers=GPU_WORKERS),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.98), eps=1e-8, warmup_steps=50),
        parallel=ParallelSpec("ddp", "bf16"),
        # early checkpoints: a non-finite or spiking loss rolls back to one (with none, the stage fails)
        checkpoint=CheckpointSpec(ckpt_every=50, keep_n_latest=1),
        vae=VAESpec(phase=1, ema_decay=0.98, standardise_batches=20),
        # a fresh autoencoder's loss moves a lot in its first steps: no spike verdicts before step 100
        recovery=RecoverySpec(spike_warmup=100),
        samples=SampleSpec(every=0), max_steps=400, log_every=20,
        heldout=copy.deepcopy(GPU_HELDOUT),
    )


def gpu_demo_vae() -> TrainConfig:
    """The full-width Video DC-AE (f32t4c128) on 16-frame 96 x 256 crops (the clips' native scale): L1 only
    (no perceptual network on the GPU machine), EMA; its latent RMS is recorded as the export's scaling factor."""
    return TrainConfig(
        name="gpu-demo-vae", stage="vae_train",
        ae=AESpec("dcae", tiny=False),
        data=DataSpec(bucket_config={"160px": {16: (1.0, 4)}}, num_workers=GPU_WORKERS),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.98), eps=1e-8, warmup_steps=50),
        parallel=ParallelSpec("ddp", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=100, keep_n_latest=1),
        vae=VAESpec(phase=1, ema_decay=0.98, standardise_batches=20),
        recovery=RecoverySpec(spike_warmup=100),
        samples=SampleSpec(every=0), max_steps=300, log_every=20,
        heldout=HeldoutSpec(every=100, num_clips=6, num_frames=32, height=128, width=256, export_init=True),
    )


def gpu_demo_stage1() -> TrainConfig:
    """351M MMDiT, text-to-video on 33-frame 144 x 256 clips (1296 image tokens), from scratch."""
    return TrainConfig(
        name="gpu-demo-stage1", stage="dit_stage1",
        model=ModelSpec("gpu-demo", {"cond_embed": False}),
        ae=AESpec("hunyuan", tiny=False), text=copy.deepcopy(GPU_TEXT),
        data=DataSpec(bucket_config={"192px": {33: (1.0, 8)}}, num_workers=GPU_WORKERS),
        optim=OptimConfig(lr=2e-4, eps=1e-8, warmup_steps=50), parallel=ParallelSpec("fsdp2", "bf16"),
        checkpoint=CheckpointSpec(ckpt_every=1000, keep_n_latest=1), max_steps=400,
        samples=SampleSpec(every=0, num_frames=33, height=128, width=256, steps=20),
        heldout=copy.deepcopy(GPU_HELDOUT), log_every=20,
    )


def gpu_demo_stage2() -> TrainConfig:
    cfg = gpu_demo_stage1()
    cfg.name, cfg.stage = "gpu-demo-stage2", "dit_stage2"
    cfg.model = ModelSpec("gpu-demo")
    cfg.condition_config = dict(I2V_MIX)
    cfg.samples.cond_type = "i2v_head"
    cfg.optim = OptimConfig(lr=1e-4, eps=1e-8)
    cfg.max_steps = 150
    return cfg


def gpu_demo_stage3() -> TrainConfig:
    """Longer clips, like the paper's stage 3: half the clips at 65 frames (2448 image tokens), the rest at 33."""
    cfg = gpu_demo_stage2()
    cfg.name, cfg.stage = "gpu-demo-stage3", "dit_stage3"
    cfg.data.bucket_config = {"192px": {65: (0.5, 4), 33: (1.0, 8)}}
    cfg.max_steps = 200
    return cfg


def gpu_demo_distill() -> TrainConfig:
    """The patch-1 MMDiT on the trained full-width DC-AE's latents, from gpu-demo-stage3 (img_in, cond_in,
    final_layer.linear re-initialised), I2V-first mix."""
    cfg = gpu_demo_stage3()
    cfg.name, cfg.stage = "gpu-demo-distill", "distill"
    cfg.model = ModelSpec("gpu-demo-hc", reinit=DISTILL_REINIT)
    cfg.ae = AESpec("dcae", tiny=False)
    cfg.condition_config = dict(DISTILL_MIX)
    cfg.data.bucket_config = {"192px": {32: (1.0, 8)}}
    cfg.optim = OptimConfig(lr=1e-4, eps=1e-8, warmup_steps=20)
    cfg.samples = SampleSpec(every=0, num_frames=32, height=128, width=256, steps=20, cond_type="i2v_head")
    cfg.heldout.num_frames = 32
    cfg.max_steps = 200
    return cfg


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "stage1-256px-h200x8": stage1_256px_h200x8,
    "stage2-256px-i2v-h200x8": stage2_256px_i2v_h200x8,
    "stage3-768px-sp4-h200x8": stage3_768px_sp4_h200x8,
    "tiny-cpu-stage1": tiny_cpu_stage1,
    "tiny-cpu-stage2": tiny_cpu_stage2,
    "tiny-cpu-stage3": tiny_cpu_stage3,
    "distill-768px-dcae-h200x8": distill_768px_dcae_h200x8,
    "vae-dcae-256px-h200x8": vae_dcae_256px_h200x8,
    "vae-dcae-256px-disc-h200x8": vae_dcae_256px_disc_h200x8,
    "stage1-256px-h100x8": h100x8(stage1_256px_h200x8),
    "stage2-256px-i2v-h100x8": h100x8(stage2_256px_i2v_h200x8),
    "stage3-768px-sp4-h100x8": h100x8(stage3_768px_sp4_h200x8),
    "distill-768px-dcae-h100x8": h100x8(distill_768px_dcae_h200x8),
    "tiny-cpu-distill": tiny_cpu_distill,
    "tiny-cpu-vae": tiny_cpu_vae,
    "tiny-cpu-hunyuan-vae": tiny_cpu_hunyuan_vae,
    "hunyuan-vae-256px-h200x8": hunyuan_vae_256px_h200x8,
    "gpu-demo-hunyuan-vae": gpu_demo_hunyuan_vae,
    "gpu-demo-vae": gpu_demo_vae,
    "gpu-demo-stage1": gpu_demo_stage1,
    "gpu-demo-stage2": gpu_demo_stage2,
    "gpu-demo-stage3": gpu_demo_stage3,
    "gpu-demo-distill": gpu_demo_distill,
}


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        from soraflow.training.config import ConfigError

        near = difflib.get_close_matches(name, RECIPES, n=1)
        raise ConfigError(f"unknown recipe {name!r}{f' (did you mean {near[0]}?)' if near else ''}; "
                          f"known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]()


