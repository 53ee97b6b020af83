"""What differs between training stages, behind one interface the Trainer drives (docs/models.md#autoencoder-training,
#dit-on-dc-ae-latents-distill, #training-stages).

A stage object builds the trainable model, turns a data batch into inputs, computes the loss, runs any work
after the optimizer step (a discriminator update, EMA), adds its own entries to checkpoints, exports the
weights in the official key layout, and writes sample videos. The Trainer keeps the loop, strategies,
checkpoints, recovery and goodput, and never branches on the stage.

* `DiTStage` (dit_stage1/2/3, distill): the MMDiT with the flow-matching objective on frozen-AE latents.
* `VAEStage` (vae_train): the Video DC-AE with L1 + perceptual, then the hinge GAN with the adaptive weight,
  EMA 0.99, mixed image/video micro-batches, an optional latent-alignment loss to a frozen teacher.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from soraflow.common.stages import AE_KIND, AE_STAGES, DIT_STAGES, STAGES
from soraflow.training.config import TrainConfig

log = logging.getLogger("soraflow.train")

# vae_train: the Video DC-AE (distill's autoencoder); hunyuan_vae_train: the KL-VAE DiT stages 1-3 train on


def build_stage(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, rank: int, world: int):
    if cfg.stage in AE_STAGES:
        return VAEStage(cfg, device, dtype, rank, world)
    if cfg.stage in DIT_STAGES:
        return DiTStage(cfg, device, dtype, rank, world)
    raise ValueError(f"config field stage: unknown stage {cfg.stage!r}; known: {list(STAGES)}")


def _write_sample(path: Path, video: torch.Tensor, fps: float = 24.0) -> None:
    """[3, T, H, W] in [-1, 1] -> an H.264 file (written to a temp name, then renamed, by write_video)."""
    from soraflow.common.video_io import to_uint8_frames, write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, to_uint8_frames(video), fps=fps)


class Stage:
    """Defaults shared by the stages; see the module docstring for the contract."""

    config_name = "custom"
    divisor = 16

    def __init__(self, cfg: TrainConfig, device, dtype, rank: int, world: int):
        self.cfg, self.device, self.dtype, self.rank, self.world = cfg, device, dtype, rank, world
        self.trainer = None

    def setup(self, trainer) -> None:
        self.trainer = trainer

    def after_step(self, weight: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def flops(self, inputs) -> float | None:
        return None

    def step_timing(self) -> dict:
        """Seconds of the last step's parts that the stage measures (e.g. the frozen encoders)."""
        return {}

    def samples_dir(self) -> Path:
        return Path(self.cfg.run_dir) / "samples"

    def extra_exports(self) -> dict[str, dict]:
        """Other weight files to write beside model.safetensors (file name -> state dict)."""
        return {}

    def export_metadata(self) -> dict[str, str]:
        """Extra safetensors metadata of an export (string values)."""
        return {}

    def heldout(self, model) -> dict | None:
        """Held-out numbers of `model` at the current step (cfg.heldout), or None when the stage has none."""
        return None

    def _heldout_clips(self):
        if getattr(self, "_clips", None) is None:
            from soraflow.training.heldout import load_heldout_clips

            h = self.cfg.heldout
            self._clips = load_heldout_clips(h.table, h.num_frames, h.height, h.width, h.num_clips)
        return self._clips


# ---- DiT stages -----------------------------------------------------------------------------------------------

class DiTStage(Stage):
    def __init__(self, cfg, device, dtype, rank, world):
        from soraflow.training.builders import build_autoencoder, build_text_conditioner

        super().__init__(cfg, device, dtype, rank, world)
        if cfg.text.tiny and not (cfg.text.t5 and cfg.text.clip) and dist.is_initialized():
            # rank 0 writes the tiny encoders into a fresh cache first; the others would read half-written files
            from soraflow.models.text.tiny import tiny_text_encoder_dirs

            if rank == 0:
                tiny_text_encoder_dirs()
            dist.barrier()
        self.ae = build_autoencoder(cfg.ae, device, dtype, cfg.seed)
        self.text = build_text_conditioner(cfg.text, device, dtype,
                                           cache_dir=Path(cfg.run_dir) / "text-cache" if rank == 0 else None)

    def build_model(self) -> nn.Module:
        from soraflow.training.builders import build_dit, check_compatible
        from soraflow.training.objective import DiTObjective

        cfg = self.cfg
        dit = build_dit(cfg.model, cfg.seed)
        check_compatible(dit, self.ae, self.text)
        self.dit_config = dit.config
        self.config_name = dit.config.name
        self.divisor = self.ae.spatial_compression * dit.config.patch_size
        self.objective = DiTObjective(
            self.ae, self.text, patch_size=dit.config.patch_size, cond_embed=dit.config.cond_embed,
            condition_config=cfg.condition_config, dropout_ratio=cfg.text.dropout_ratio, dtype=self.dtype,
            seq_align=max(1, cfg.parallel.sp_size),
        )
        return dit

    def prepare(self, batch: dict, generator: torch.Generator):
        return self.objective.prepare(batch["video"].to(self.device, non_blocking=True), list(batch["text"]),
                                      generator)

    def loss(self, model, inputs) -> torch.Tensor:
        return self.objective.loss(model, inputs)

    def tokens(self, inputs) -> int:
        return inputs.tokens

    def step_timing(self) -> dict:
        return dict(self.objective.last_timing)

    def flops(self, inputs) -> float:
        from soraflow.models.mmdit import mmdit_forward_flops

        img, txt = inputs.kwargs["img"], inputs.kwargs["txt"]
        return 3 * mmdit_forward_flops(self.dit_config, img.shape[1], txt.shape[1], img.shape[0])

    def heldout(self, model) -> dict:
        from soraflow.training.heldout import HeldoutLatents, fm_heldout_loss

        if getattr(self, "_latents", None) is None:  # the AE is frozen: encode the clips once
            self._latents = HeldoutLatents(self.ae, self.text, self._heldout_clips(), self.device, self.dtype)
        return fm_heldout_loss(model, self._latents, config=self.dit_config)

    def extra_exports(self) -> dict[str, dict]:
        """A seeded random autoencoder (tiny recipes without AE weights) is part of what the model means:
        whoever samples from this DiT must decode with the same one, so it ships beside it."""
        if self.cfg.ae.path is None:
            return {"autoencoder.safetensors": {k: v.detach().cpu() for k, v in self.ae.state_dict().items()}}
        return {}

    def export_state(self, model) -> dict:
        """Full weights (a collective under FSDP2: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    @torch.no_grad()
    def write_samples(self, model, inputs, batch: dict, step: int) -> Path | None:
        """A short generation through the flow sampler (every rank runs it: a sharded model needs all ranks)."""
        from soraflow.models.flow import sample

        s, ae = self.cfg.samples, self.ae
        sc = ae.spatial_compression
        if s.height % (sc * self.dit_config.patch_size) or s.width % (sc * self.dit_config.patch_size):
            raise ValueError(f"samples.height/width {s.height}x{s.width} must be multiples of "
                             f"{sc * self.dit_config.patch_size} for this autoencoder and patch size")
        shape = (1, ae.latent_channels, ae.latent_frames(s.num_frames), s.height // sc, s.width // sc)
        text = self.text.encode([s.prompt], seq_align=max(1, self.cfg.parallel.sp_size))
        null = self.text.null(batch_size=1, length=text["txt"].shape[1])
        text = {k: v.to(self.device, self.dtype) for k, v in text.items()}
        null = {k: v.to(self.device, self.dtype) for k, v in null.items()}
        ref = None
        cond_type = s.cond_type if self.dit_config.cond_embed else "t2v"
        if cond_type != "t2v":
            # the reference image: the current batch's first frame, resized to the sample size
            frame = batch["video"][:1, :, :1].to(self.device, self.dtype)
            frame = F.interpolate(frame[:, :, 0].float(), size=(s.height, s.width), mode="bilinear",
                                  align_corners=False).unsqueeze(2).to(self.dtype)
            ref = ae.encode(frame)
        was_training = model.training
        model.eval()
        latent = sample(model, text=text, null_text=null, latent_shape=shape, cond_type=cond_type, ref_latent=ref,
                        steps=s.steps, seed=s.seed, device=self.device, dtype=self.dtype, progress=False,
                        is_causal=ae.is_causal, time_compression=ae.time_compression)
        model.train(was_training)
        video = ae.decode(latent.to(self.dtype))
        if self.rank != 0:
            return None
        path = self.samples_dir() / f"step-{step:06d}.mp4"
        _write_sample(path, video[0].float())
        return path


# ---- vae_train ------------------------------------------------------------------------------------------------

class AETrainModel(nn.Module):
    """The trainable part of an autoencoder stage: the DC-AE (or the HunyuanVideo KL-VAE) plus, with a teacher,
    the 1x1x1 projection of the latent to the teacher's feature width (not exported: the export holds only the
    autoencoder's official keys). Returns (reconstruction, latent, projection or None, KL or None)."""

    def __init__(self, ae: nn.Module, align_dim: int | None = None):
        super().__init__()
        self.ae = ae
        self.align_proj = nn.Conv3d(ae.latent_channels, align_dim, 1) if align_dim else None

    def forward(self, x: torch.Tensor):
        kl = None
        if hasattr(self.ae, "encode_moments"):  # KL-VAE: reparameterised posterior sample, KL to N(0, I)
            mean, logvar = self.ae.encode_moments(x).chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            recon = self.ae.decode(self.ae.scaling_factor * (z - self.ae.shift_factor))
            kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
        else:
            recon, z = self.ae(x)
        return recon, z, (self.align_proj(z) if self.align_proj is not None else None), kl


@torch.no_grad()
def init_posterior_logvar(ae, logvar: float) -> None:
    """Start a KL-VAE with the posterior log-variance `logvar` everywhere: the logvar rows of the 1x1x1
    quant_conv get zero weights and this bias (the mean rows keep their init), so the first samples carry the
    means with noise std exp(logvar / 2) instead of about 1."""
    c = ae.latent_channels
    ae.quant_conv.weight[c:].zero_()
    ae.quant_conv.bias[c:].fill_(float(logvar))


@torch.no_grad()
def fold_latent_standardisation(ae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the KL-VAE's scaled latents zero-mean, unit-variance per channel without changing what it computes
    end to end: z' = a·(z − m) with a = 1 / (scaling_factor · std), folded into quant_conv (posterior mean rows
    and logvar bias) and post_quant_conv (input columns and bias). Both are 1x1x1 convolutions, so it is exact."""
    c = ae.latent_channels
    a = 1.0 / (ae.scaling_factor * std.clamp_min(1e-6))
    q, pq = ae.quant_conv, ae.post_quant_conv
    w_post = pq.weight.detach().clone()  # [C_out, C, 1, 1, 1]
    q.weight[:c] *= a.view(-1, 1, 1, 1, 1).to(q.weight.dtype)
    q.bias[:c] = (q.bias[:c] - mean.to(q.bias.dtype)) * a.to(q.bias.dtype)
    q.bias[c:] += (2.0 * torch.log(a)).to(q.bias.dtype)
    pq.bias += (w_post.flatten(1) @ mean.to(w_post.dtype)).to(pq.bias.dtype)
    pq.weight /= a.view(1, -1, 1, 1, 1).to(pq.weight.dtype)


@torch.no_grad()
def measured_forward_flops(module: nn.Module, *args) -> float:
    """FLOPs of one forward of `module` on `args`, by torch.utils.flop_counter (2 per multiply-add); the RNG
    state is restored, so counting does not change what training draws."""
    from torch.utils.flop_counter import FlopCounterMode

    devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda]
    with torch.random.fork_rng(devices=devices[:1]), FlopCounterMode(display=False) as counter:
        module(*args)
    return float(counter.get_total_flops())


def _frozen(module):
    for p in module.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad = False
    return module


def _load_script(path: str, field: str) -> torch.jit.ScriptModule:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{field}: {path} is not a file (expected a TorchScript module saved with "
                                "torch.jit.save)")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as exc:  # a wrong file type: say which field pointed at it
        raise ValueError(f"{field}: {path} is not a loadable TorchScript module ({exc})") from exc


def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    """ema <- decay·ema + (1 − decay)·param, in fp32."""
    for name, p in params.items():
        ema[name].mul_(decay).add_(p.detach().float(), alpha=1.0 - decay)


def latent_alignment_loss(proj: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """mean(1 − cos) between projected latents [N, D, h, w] and teacher features pooled to (h, w)."""
    target = F.adaptive_avg_pool2d(teacher_feats.float(), proj.shape[-2:])
    return (1.0 - F.cosine_similarity(proj.float(), target, dim=1)).mean()


class VAEStage(Stage):
    def __init__(self, cfg, device, dtype, rank, world):
        super().__init__(cfg, device, dtype, rank, world)
        self.kind = AE_KIND[cfg.stage]
        if cfg.ae.kind != self.kind:
            raise ValueError(f"{cfg.stage} trains the {'Video DC-AE' if self.kind == 'dcae' else 'HunyuanVideo VAE'}:"
                             f" set ae.kind={self.kind!r} (got {cfg.ae.kind!r})")
        if self.kind == "hunyuan" and cfg.vae.phase != 1:
            raise ValueError("hunyuan_vae_train has no GAN phase: set vae.phase=1")
        if cfg.parallel.strategy not in ("ddp", "single"):
            # The adaptive GAN weight takes autograd.grad at the decoder's last conv weight, which must be a
            # plain (replicated) parameter; upstream trains the AE with ZeRO-2, which also keeps it replicated.
            raise ValueError(f"vae_train needs parallel.strategy 'ddp' or 'single' (got "
                             f"{cfg.parallel.strategy!r}): the adaptive weight needs unsharded decoder weights")
        if cfg.vae.phase not in (1, 2):
            raise ValueError(f"vae.phase must be 1 or 2, got {cfg.vae.phase!r}")
        for res, frames in cfg.data.bucket_config.items():
            if self.kind == "hunyuan":
                bad = [t for t in frames if (t - 1) % 4]
                if bad:  # the causal VAE encodes 1 + 4k frames
                    raise ValueError(f"data.bucket_config[{res!r}]: frame counts {bad} do not suit "
                                     "hunyuan_vae_train; use 1 + 4k (1, 5, 9, ...)")
                continue
            bad = [t for t in frames if t != 1 and (t % 4 or t < 8)]
            if bad:
                # the DC-AE decodes a single latent frame as one image, so 4-frame clips cannot reconstruct
                raise ValueError(f"data.bucket_config[{res!r}]: frame counts {bad} do not suit vae_train; use 1 "
                                 "(images) or multiples of 4 from 8 on (the Video DC-AE compresses time by 4)")
        v = cfg.vae
        self.perceptual = None
        if v.perceptual_path:
            self.perceptual = _frozen(_load_script(v.perceptual_path, "vae.perceptual_path").to(device))
            v.perceptual_term = f"on: {v.perceptual_path} (weight {v.perceptual_weight})"
        else:
            v.perceptual_term = "off: no vae.perceptual_path given; training with L1 only"
            if rank == 0:
                log.warning("vae_train: no perceptual network (vae.perceptual_path); training without the "
                            "perceptual term")
        self.teacher = None
        if v.align_teacher_path:
            self.teacher = _frozen(_load_script(v.align_teacher_path, "vae.align_teacher_path").to(device))
        self.gan = v.phase == 2
        self.disc = self.disc_opt = None
        self.ema: dict[str, torch.Tensor] = {}
        self.last: dict = {}
        self.lat: dict[str, torch.Tensor] = {}  # latent statistics for the standardisation (KL-VAE)
        self.standardisation: dict = {}

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if self.kind == "hunyuan":
            from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
            from soraflow.models.hunyuan_vae.config import config_for_weights

            if cfg.ae.config:
                config, self.config_name = HunyuanVAEConfig.named(cfg.ae.config), cfg.ae.config
            else:
                config = config_for_weights(cfg.ae.path, cfg.ae.tiny)
                self.config_name = "hunyuan-vae-tiny" if cfg.ae.tiny else "hunyuan-vae"
            ae = (HunyuanVideoVAE.from_pretrained(cfg.ae.path, config=config) if cfg.ae.path
                  else HunyuanVideoVAE(config))
            if not cfg.ae.path and cfg.vae.logvar_init is not None:
                init_posterior_logvar(ae, cfg.vae.logvar_init)
        else:
            from soraflow.models.dc_ae import DCAEConfig, VideoDCAE

            config = DCAEConfig.tiny() if cfg.ae.tiny else DCAEConfig()
            ae = VideoDCAE.from_pretrained(cfg.ae.path, config=config) if cfg.ae.path else VideoDCAE(config)
            self.config_name = "dc-ae-tiny" if cfg.ae.tiny else "dc-ae-f32t4c128"
        ae.train().requires_grad_(True)
        self.ae_config = config
        self.divisor = ae.spatial_compression
        self.time_compression = ae.time_compression
        align_dim = None
        if self.teacher is not None:
            with torch.no_grad():
                probe = self.teacher(torch.zeros(1, 3, self.divisor, self.divisor, device=self.device))
            if probe.dim() != 4:
                raise ValueError(f"vae.align_teacher_path: the teacher must return [N, D, h, w] features, got "
                                 f"shape {tuple(probe.shape)}")
            align_dim = probe.shape[1]
        return AETrainModel(ae, align_dim)

    def setup(self, trainer) -> None:
        from soraflow.models.dc_ae import NLayerDiscriminator3D

        super().setup(trainer)
        self.inner = trainer.strategy.unwrap(trainer.model)
        self.ema = {n: p.detach().float().clone() for n, p in self.inner.ae.named_parameters()}
        if self.cfg.vae.standardise_batches:
            # allocated up front so a checkpoint restore fills them (a restore only loads keys it is given): a
            # run resumed at its end exports the same standardised autoencoder as the run that reached it
            c = self.inner.ae.latent_channels
            self.lat = {"lat_sum": torch.zeros(c, dtype=torch.float64), "lat_sq": torch.zeros(c, dtype=torch.float64),
                        "lat_n": torch.zeros(1, dtype=torch.float64)}
        if self.gan:
            v = self.cfg.vae
            torch.manual_seed(self.cfg.seed + 2)  # the same discriminator init on every rank
            self.disc = NLayerDiscriminator3D(3, v.disc_ndf, v.disc_layers).to(self.device)
            o = self.cfg.optim
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=v.disc_lr, betas=o.betas, eps=o.eps,
                                              weight_decay=o.weight_decay)

    # -- step -----------------------------------------------------------------------------------------------------
    def _image_batch(self, generator: torch.Generator) -> bool:
        """Upstream "mixed_video_image": rank 0 always trains on video, the others on the first frame only with
        probability N·r/(N−1), so a fraction r of all micro-batches are images. One process uses r."""
        r = self.cfg.vae.mixed_image_ratio
        if r <= 0 or self.trainer.dp_world > 1 and self.trainer.dp_rank == 0:
            return False
        n = self.trainer.dp_world
        p = r if n == 1 else min(1.0, n * r / (n - 1))
        return bool(torch.rand(1, generator=generator, device=generator.device).item() < p)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        video = batch["video"].to(self.device, non_blocking=True)
        if video.shape[2] > 1 and self._image_batch(generator):
            video = video[:, :, :1]
        # The discriminator's dropout draws from a seed taken from the checkpointed step generator, not from
        # the global RNG (which e.g. a new DataLoader iterator advances after a resume).
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
        return {"video": video, "seed": seed}

    def _disc(self, *xs: torch.Tensor, seed: int) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return [self.disc(x) for x in xs]

    def tokens(self, inputs) -> int:
        b, _, t, h, w = inputs["video"].shape
        t_lat = self.inner.ae.latent_frames(t)
        return b * t_lat * (h // self.divisor) * (w // self.divisor)

    def flops(self, inputs) -> float:
        """Training FLOPs of the step: 3 x the autoencoder's forward FLOPs (backward = 2 x forward), the
        forward counted once per input shape by torch's FLOP counter (convolutions, matmuls, attention)."""
        x = inputs["video"]
        key = tuple(x.shape)
        cache = self.__dict__.setdefault("_fwd_flops", {})
        if key not in cache:
            cache[key] = measured_forward_flops(self.inner, x)
        return 3.0 * cache[key]

    def gan_active(self) -> bool:
        return self.gan and self.trainer.step >= self.cfg.vae.disc_start

    def loss(self, model, inputs) -> torch.Tensor:
        from soraflow.models.dc_ae import adaptive_disc_weight, generator_loss, reconstruction_nll

        v = self.cfg.vae
        x = inputs["video"]
        recon, z, proj, kl = model(x)
        nll = reconstruction_nll(x, recon, self.perceptual, v.perceptual_weight)
        total, stats = nll, {"nll": float(nll.detach())}
        if kl is None:
            self._record_latents(z)  # the DC-AE's raw latents: their RMS becomes the exported scaling factor
        if kl is not None:
            # reconstruction_nll sums over C·H·W per frame: the KL is put on the same per-frame footing
            total = total + v.kl_weight * kl * x.shape[1] * x.shape[3] * x.shape[4]
            stats["kl"] = float(kl.detach())
            self._record_latents(z)
        if proj is not None:
            b, d, t, h, w = proj.shape
            # one teacher frame per latent frame: the first pixel frame of each temporal group
            frames = x[:, :, :: self.time_compression][:, :, :t] if x.shape[2] > 1 else x
            with torch.no_grad():
                feats = self.teacher(frames.transpose(1, 2).reshape(b * t, 3, *x.shape[-2:]).float())
            align = latent_alignment_loss(proj.transpose(1, 2).reshape(b * t, d, h, w), feats)
            total = total + v.align_weight * align
            stats["align"] = float(align.detach())
        if self.gan_active():
            self.disc.requires_grad_(False)  # the generator term must not leave gradients in D
            g = generator_loss(self._disc(recon, seed=inputs.get("seed", 0))[0])
            self.disc.requires_grad_(True)
            d_weight = adaptive_disc_weight(nll, g, self.inner.ae.get_last_layer(), v.disc_weight)
            total = total + d_weight * g
            stats.update(g=float(g.detach()), d_weight=float(d_weight))
        self.last = {"video": x, "recon": recon.detach(), "stats": stats, "seed": inputs.get("seed", 0) + 1}
        return total

    def after_step(self, weight: float) -> None:
        """The discriminator's own step (hinge loss on real vs the detached reconstruction), then EMA."""
        from soraflow.models.dc_ae import hinge_d_loss

        if self.gan_active():
            x, recon = self.last["video"], self.last["recon"]
            real, fake = self._disc(x, recon, seed=self.last["seed"])
            d_loss = hinge_d_loss(real, fake) * weight
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if dist.is_initialized() and dist.get_world_size() > 1:
                for p in self.disc.parameters():  # plain all-reduce: D is replicated, not wrapped
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= dist.get_world_size()
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.optim.grad_clip)
            self.disc_opt.step()
            self.last["stats"]["d_loss"] = float(d_loss.detach())
        ema_update(self.ema, dict(self.inner.ae.named_parameters()), self.cfg.vae.ema_decay)

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = {"ema": self.ema}
        if self.lat:
            out["latent_stats"] = self.lat
        if self.disc is not None:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.disc, self.disc_opt)
            out["disc"] = {"model": model_sd, "optimizer": optim_sd}
        return out

    def load_state_dict(self, state: dict) -> None:
        if "latent_stats" in state:
            for k, v in state["latent_stats"].items():
                if k in self.lat and self.lat[k].data_ptr() != v.data_ptr():
                    self.lat[k].copy_(v)
        for name, t in state.get("ema", {}).items():
            if self.ema[name].data_ptr() != t.data_ptr():
                self.ema[name].copy_(t)
        if self.disc is not None and "disc" in state:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            set_state_dict(self.disc, self.disc_opt, model_state_dict=state["disc"]["model"],
                           optim_state_dict=state["disc"]["optimizer"])

    def _ema_ae(self):
        """A copy of the autoencoder holding the EMA weights (what the stage exports), in eval mode."""
        import copy

        ae = copy.deepcopy(self.inner.ae).eval()
        with torch.no_grad():
            for name, p in ae.named_parameters():
                p.copy_(self.ema[name].to(p.dtype))
        return ae.requires_grad_(False)

    @torch.no_grad()
    def _record_latents(self, z: torch.Tensor) -> None:
        """Per-channel sums of the posterior samples of the last vae.standardise_batches steps."""
        n = self.cfg.vae.standardise_batches
        if not n or self.trainer.step < self.cfg.max_steps - n:
            return
        flat = z.detach().float().transpose(0, 1).reshape(z.shape[1], -1)
        if "lat_n" not in self.lat or self.lat["lat_sum"].numel() != z.shape[1]:
            self.lat = {"lat_sum": torch.zeros(z.shape[1], dtype=torch.float64),
                        "lat_sq": torch.zeros(z.shape[1], dtype=torch.float64),
                        "lat_n": torch.zeros(1, dtype=torch.float64)}
        self.lat["lat_sum"] += flat.sum(dim=1).double().cpu()
        self.lat["lat_sq"] += flat.pow(2).sum(dim=1).double().cpu()
        self.lat["lat_n"] += flat.shape[1]

    def _standardise(self, ae) -> dict:
        if "lat_n" not in self.lat or float(self.lat["lat_n"]) < 2:
            return {}
        n = float(self.lat["lat_n"])
        m = self.lat["lat_sum"] / n
        sd = (self.lat["lat_sq"] / n - m.pow(2)).clamp_min(1e-12).sqrt()
        fold_latent_standardisation(ae, m.float().to(self.device), sd.float().to(self.device))
        return {"latent_mean_before": m.tolist(), "latent_std_before": sd.tolist()}

    def export_metadata(self) -> dict[str, str]:
        """The DC-AE's latent scaling factor measured on the last training batches (the RMS of its raw latents,
        as upstream's 0.493 was measured), so the DiT sees latents of about unit scale; loaders read it."""
        if self.kind != "dcae" or "lat_n" not in self.lat or float(self.lat["lat_n"]) < 2:
            return {}
        n = float(self.lat["lat_n"])
        rms = float((self.lat["lat_sq"].sum() / (n * len(self.lat["lat_sq"]))).sqrt())
        return {"scaling_factor": f"{max(rms, 1e-6):.6g}"}

    def export_state(self, model) -> dict:
        """The EMA weights under the autoencoder's official keys (buffers, if any, as trained); the KL-VAE with
        its latent standardisation folded in when vae.standardise_batches is set."""
        if self.kind == "hunyuan":
            ae = self._ema_ae()
            self.standardisation = self._standardise(ae)
            return {k: v.detach().cpu().clone() for k, v in ae.official_state_dict().items()}
        state = {k: v.detach().cpu() for k, v in self.inner.ae.state_dict().items()}
        state.update({k: v.detach().cpu().clone() for k, v in self.ema.items()})
        return state

    def heldout(self, model) -> dict:
        """Reconstruction PSNR of the held-out clips through the EMA weights (the exported autoencoder)."""
        from soraflow.training.heldout import ae_heldout_metrics

        # the export also folds the latent standardisation in: an exact refactoring, same reconstructions
        out = ae_heldout_metrics(self._ema_ae(), self._heldout_clips(), self.device, self.dtype)
        return {"psnr": out["psnr"], "psnr_per_clip": out["psnr_per_clip"], "n_clips": out["n_clips"]}

    @torch.no_grad()
    def write_samples(self, model, inputs, batch: dict, step: int) -> Path | None:
        """Input | reconstruction side by side, for the first clip of the current micro-batch (rank 0)."""
        if self.rank != 0:
            return None
        x = inputs["video"][:1]
        ae = self.inner.ae
        was_training = ae.training
        ae.eval()
        recon = ae.decode(ae.encode(x))
        ae.train(was_training)
        pair = torch.cat([x[0], recon[0].float().clamp(-1, 1)], dim=-1)
        path = self.samples_dir() / f"step-{step:06d}-recon.mp4"
        _write_sample(path, pair)
        return path
