"""Build the frozen parts (autoencoder, text encoders) and the trainable DiT from a TrainConfig."""

from __future__ import annotations

import torch

from soraflow.models.mmdit import MMDiT, get_config, load_flux_checkpoint
from soraflow.training.config import AESpec, ModelSpec, TextSpec
from soraflow.training.parallel.mmdit import apply_activation_checkpointing


def build_dit(spec: ModelSpec, seed: int) -> MMDiT:
    """fp32 on the CPU (the strategy moves/shards it); initialised from the previous stage or FLUX if given."""
    torch.manual_seed(seed)  # identical random init on every rank
    model = MMDiT(get_config(spec.config, **spec.overrides))
    if spec.from_pretrained and spec.from_flux:
        raise ValueError("give one of model.from_pretrained (Open-Sora layout) or model.from_flux, not both")
    if spec.from_pretrained:
        load_pretrained(model, spec.from_pretrained, spec.reinit)
    elif spec.from_flux:
        load_flux_checkpoint(model, spec.from_flux)
    apply_activation_checkpointing(model, spec.grad_ckpt_settings)
    return model


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_pretrained(model: MMDiT, path: str, reinit=()) -> list[str]:
    """Load an Open-Sora-layout checkpoint (a previous stage's export) strictly, with two named exceptions:

    * keys under `reinit` keep the model's fresh init (distill: img_in, cond_in, final_layer.linear change
      shape with the latent space, docs/models.md#dit-on-dc-ae-latents-distill); the checkpoint must hold them, so a
      file of another kind is
      caught rather than half-loaded;
    * a checkpoint without any cond_in (a text-to-video stage-1 export) leaves the model's zero-initialised
      cond_in as it is (the T/I2V stages start from it, docs/models.md#mmdit-initialisation-from-flux).

    Every other key must be present with the model's shape. Returns the keys left at their init."""
    from pathlib import Path

    from soraflow.models.mmdit.checkpoint import check_state_dict, read_safetensors

    if not Path(path).exists():
        raise FileNotFoundError(f"model.from_pretrained: {path} does not exist")
    state = read_safetensors(path)
    absent = [p for p in reinit if not any(_under(k, [p]) for k in state)]
    if absent:
        raise ValueError(f"{path}: model.reinit names {absent}, which the checkpoint does not hold; is it an "
                         "MMDiT (stage-3) export?")
    fresh = [k for k in model.state_dict() if _under(k, reinit)]
    if not any(_under(k, ["cond_in"]) for k in state):
        fresh += [k for k in model.state_dict() if _under(k, ["cond_in"]) and k not in fresh]
    kept = {k: v for k, v in state.items() if not _under(k, reinit)}
    check_state_dict(model, kept, str(path), allow_missing=fresh)
    result = model.load_state_dict(kept, strict=False)
    if set(result.missing_keys) != set(fresh) or result.unexpected_keys:
        raise RuntimeError(f"{path}: loading left {result.missing_keys} missing and {result.unexpected_keys} "
                           f"unexpected; expected exactly {fresh}")
    return fresh


def build_autoencoder(spec: AESpec, device, dtype, seed: int):
    """The frozen autoencoder used for the full encode (encoder, quant conv, posterior sample, scale)."""
    torch.manual_seed(seed + 1)
    if spec.kind == "hunyuan":
        from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
        from soraflow.models.hunyuan_vae.config import config_for_weights

        config = HunyuanVAEConfig.named(spec.config) if spec.config else config_for_weights(spec.path, spec.tiny)
        ae = HunyuanVideoVAE.from_pretrained(spec.path, config=config) if spec.path else HunyuanVideoVAE(config)
    elif spec.kind == "dcae":
        from soraflow.models.dc_ae import DCAEConfig, VideoDCAE

        config = DCAEConfig.for_weights(spec.path, spec.tiny)
        ae = VideoDCAE.from_pretrained(spec.path, config=config) if spec.path else VideoDCAE(config)
    else:
        raise ValueError(f"ae.kind must be 'hunyuan' or 'dcae', got {spec.kind!r}")
    if spec.path is None and not spec.tiny:
        raise ValueError("a full-size autoencoder needs ae.path (pretrained weights); random full-size AEs are "
                         "for benchmarks only")
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_text_conditioner(spec: TextSpec, device, dtype, cache_dir=None):
    from soraflow.models.text import TextConditioner

    if spec.t5 and spec.clip:
        t5, clip = spec.t5, spec.clip
    elif spec.tiny:
        from soraflow.models.text.tiny import tiny_text_encoder_dirs

        t5, clip = tiny_text_encoder_dirs()
    else:
        raise ValueError("text.t5 and text.clip must name local folders (or set text.tiny for the tiny encoders)")
    return TextConditioner.from_pretrained(t5, clip, dtype=dtype, device=device, cache_dir=cache_dir,
                                           t5_max_length=spec.t5_max_length)


def check_compatible(dit: MMDiT, ae, text) -> None:
    """Stop early, naming the mismatch, when the DiT cannot take this AE's latents or these text features."""
    c = dit.config
    problems = []
    if ae.latent_channels * c.patch_size**2 != c.in_channels:
        problems.append(
            f"the DiT config {c.name!r} takes {c.in_channels} input channels = latent x patch^2 "
            f"({c.latent_channels} x {c.patch_size}^2), but the {type(ae).__name__} gives {ae.latent_channels} "
            "latent channels"
        )
    if text.txt_dim != c.context_in_dim:
        problems.append(f"T5 features are {text.txt_dim} wide, the DiT's txt_in expects {c.context_in_dim}")
    if text.vec_dim != c.vec_in_dim:
        problems.append(f"CLIP pooled vectors are {text.vec_dim} wide, the DiT's vector_in expects {c.vec_in_dim}")
    if problems:
        raise ValueError("incompatible training inputs: " + "; ".join(problems))
