"""Text-to-image for text-to-image-to-video (`docs/inference.md`): a FLUX-layout MMDiT with the distilled-guidance embedder
draws one frame, the FLUX 2D autoencoder decodes it.

Sampling is FLUX.1-dev's guidance-distilled one: one forward per step with the guidance scale fed to
`guidance_in` (default 4.0), no classifier-free guidance, the same linear-α shifted schedule as the video
sampler (Open-Sora's `DistilledDenoiser`). The image latent is a one-frame latent [1, 16, 1, 2⌈H/16⌉, 2⌈W/16⌉],
so the video sampler runs it unchanged with a single-pass predictor.

Image models: `flux1-dev` (a `flux1-dev.safetensors` in FLUX layout, converted on load) or `tiny-flux` (CPU
tests), or a path to a FLUX-layout file. The autoencoder is diffusers' AutoencoderKL with FLUX's configuration
(16 channels, latent = (z - 0.1159) x 0.3611 undone before decoding): a diffusers folder (FLUX.1-dev's `vae/`) or
the original single-file `ae.safetensors` (keys converted by diffusers' LDM converter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from soraflow.models.flow.sampler import GuidanceBatch, inference_latent_shape, sample
from soraflow.models.mmdit import get_config
from soraflow.models.mmdit.checkpoint import build_mmdit

FLUX_AE_SCALE, FLUX_AE_SHIFT = 0.3611, 0.1159
FLUX_AE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), use_quant_conv=False, use_post_quant_conv=False,
    scaling_factor=FLUX_AE_SCALE, shift_factor=FLUX_AE_SHIFT,
)
# Same structure (4 levels: x8 compression, 16 latent channels), tiny widths.
TINY_FLUX_AE_CONFIG = {**FLUX_AE_CONFIG, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8,
                       "layers_per_block": 1}
IMAGE_PRESETS = {
    # name: (MMDiT config, tiny?, file expected in --weights-dir)
    "flux1-dev": ("flux1-dev", False, "flux1-dev.safetensors"),
    "tiny-flux": ("tiny", True, "flux.safetensors"),
}
FLUX_AE_FILE = "ae.safetensors"


def image_dit_config(preset: str):
    name, tiny, _ = IMAGE_PRESETS[preset]
    if tiny:  # the tiny video config with FLUX's guidance embedder and no visual-condition input
        return get_config(name).with_overrides(guidance_embed=True, cond_embed=False, name="tiny-flux")
    return get_config(name)


@dataclass
class ImagePipeline:
    dit: torch.nn.Module
    ae: torch.nn.Module  # diffusers AutoencoderKL

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.ae.config.block_out_channels) - 1)


def build_flux_ae(path: str | Path | None, tiny: bool, device, dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    if path is None:
        ae = AutoencoderKL(**(TINY_FLUX_AE_CONFIG if tiny else FLUX_AE_CONFIG))
    elif Path(path).is_dir():
        ae = AutoencoderKL.from_pretrained(path)
    else:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        from soraflow.models.mmdit.checkpoint import read_safetensors

        ae = AutoencoderKL(**(TINY_FLUX_AE_CONFIG if tiny else FLUX_AE_CONFIG))
        state = convert_ldm_vae_checkpoint(read_safetensors(path), ae.config)
        missing, unexpected = ae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"FLUX autoencoder {path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_image_pipeline(model: str | None, ae: str | None, weights_dir: str | None, random_init: bool,
                         device, dtype) -> ImagePipeline:
    """`model`: a preset name (weights from `weights_dir`, or random with `random_init`) or a FLUX-layout file."""
    spec = model or "flux1-dev"
    if spec in IMAGE_PRESETS:
        preset = spec
        _, tiny, file_name = IMAGE_PRESETS[spec]
        dit_path = None if random_init else (Path(weights_dir) / file_name if weights_dir else None)
        if dit_path is None and not random_init:
            raise ValueError(f"image model {spec!r}: pass --weights-dir (expects {file_name}) or a file path, "
                             "or --random-init")
    else:
        preset, tiny, dit_path = "flux1-dev", False, Path(spec)
    if dit_path is not None and not dit_path.exists():
        raise FileNotFoundError(f"image model weights not found: {dit_path}")
    config = image_dit_config(preset)
    dit = build_mmdit(config, dit_path, device=device, dtype=dtype, weights_layout="flux")
    ae_path = Path(ae) if ae else (None if random_init else (Path(weights_dir) / FLUX_AE_FILE if weights_dir else None))
    if ae_path is None and not random_init:
        raise ValueError("FLUX autoencoder: pass --image-ae (diffusers folder or ae.safetensors) or --weights-dir")
    if ae_path is not None and not ae_path.exists():
        raise FileNotFoundError(f"FLUX autoencoder not found: {ae_path}")
    ae_model = build_flux_ae(ae_path, tiny, device, dtype)
    return ImagePipeline(dit.eval().requires_grad_(False), ae_model)


def distilled_velocity(model, img: torch.Tensor, t_curr: float, batch: GuidanceBatch):
    """One forward on the prompt rows, guidance through the embedder: returns it as (v_c, v_u, v_u2) so the
    sampler's combination v_u2 + g_img(v_u - v_u2) + g_txt(v_c - v_u) is exactly v."""
    b = img.shape[0]
    v = model(img=img, img_ids=batch.img_ids[:b], txt=batch.txt[:b], txt_ids=batch.txt_ids[:b],
              timesteps=torch.full((b,), t_curr, device=img.device, dtype=img.dtype), y_vec=batch.y_vec[:b],
              cond=None, guidance=batch.guidance[:b])
    return v, v, v


def text_to_image(pipe: ImagePipeline, text: dict, *, height: int, width: int, steps: int, guidance: float,
                  seed: int, device, dtype, progress=False) -> torch.Tensor:
    """Prompt embeddings -> image [1, 3, H, W] in [-1, 1] (float32)."""
    p = pipe.dit.config.patch_size
    shape = inference_latent_shape(1, 1, height, width, latent_channels=pipe.dit.config.latent_channels,
                                   time_compression=1, spatial_compression=pipe.spatial_compression,
                                   is_causal=True, patch_size=p)
    latent = sample(pipe.dit, text=text, null_text=text, latent_shape=shape, cond_type="t2v", steps=steps,
                    guidance_text=guidance, seed=seed, device=device, dtype=dtype, progress=progress,
                    predict=distilled_velocity)
    z = latent[:, :, 0].to(dtype) / FLUX_AE_SCALE + FLUX_AE_SHIFT
    image = pipe.ae.decode(z).sample.float().clamp(-1, 1)
    return image[:, :, :height, :width]
