"""HunyuanVideo VAE (docs/models.md#hunyuanvideo-vae): frozen causal 4x8x8 autoencoder with 16 latent channels."""

from .config import HunyuanVAEConfig, TilingConfig, TilingPlan
from .keys import (
    OFFICIAL_TO_DIFFUSERS_RENAMES,
    diffusers_to_official_key,
    official_state_dict_keys,
    official_state_dict_shapes,
    official_to_diffusers_key,
)
from .model import CheckpointMismatch, HunyuanVideoVAE

__all__ = [
    "HunyuanVideoVAE",
    "HunyuanVAEConfig",
    "TilingConfig",
    "TilingPlan",
    "CheckpointMismatch",
    "OFFICIAL_TO_DIFFUSERS_RENAMES",
    "official_state_dict_keys",
    "official_state_dict_shapes",
    "official_to_diffusers_key",
    "diffusers_to_official_key",
]
