"""What every video autoencoder in soraflow offers to the samplers and the training stages.

Both the HunyuanVideo VAE (causal, 4x8x8, 16 channels) and the Video DC-AE (non-causal, 4x32x32, 128
channels) implement this protocol, so the flow-matching code never branches on the autoencoder class.
Latents crossing this interface are already *scaled* (the diffusion model's space): `encode` applies the
autoencoder's latent scaling once and `decode` undoes it once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VideoAutoencoder(Protocol):
    latent_channels: int  # 16 (HunyuanVideo VAE) or 128 (Video DC-AE)
    time_compression: int  # 4 for both
    spatial_compression: int  # 8 (HunyuanVideo VAE) or 32 (Video DC-AE)
    is_causal: bool  # causal AEs take 4k+1 frames; non-causal ones multiples of 4

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> scaled latent [B, C, T_lat, H/s, W/s]."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> [B, 3, T, H, W] in about [-1, 1]."""
        ...

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for `num_frames` pixel frames; raises ValueError naming the rule if invalid."""
        ...
