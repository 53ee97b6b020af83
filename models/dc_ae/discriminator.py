"""3D PatchGAN discriminator used for Video DC-AE phase-2 training (docs/models.md#autoencoder-training).

Semantics of upstream `N_Layer_discriminator_3D` (`opensora/models/vae/discriminator.py`, config
`configs/vae/train/video_dc_ae_disc.py`: input_nc=3, n_layers=5, conv_cls="conv3d"):

    conv k3 s2 (bias) 3->ndf, LeakyReLU(0.2)
    for n in 1..n_layers-1: conv k3 (no bias) ndf*m_prev -> ndf*m, m = min(2^n, 8), stride 2 for n == 1 and
        (1, 2, 2) after; BatchNorm3d; LeakyReLU(0.2); Dropout(0.3)
    conv k3 s1 (no bias) -> ndf*min(2^n_layers, 8); BatchNorm3d; LeakyReLU(0.2); Dropout(0.3)
    conv k3 s1 (bias) -> 1 channel (patch logits)

All padding 1. Init: conv weights N(0, 0.02) (conv biases keep the PyTorch default, as upstream), BatchNorm
weight N(1, 0.02) and bias 0. Layers live in `self.main` (nn.Sequential) so keys are `main.{i}.*` as upstream.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["NLayerDiscriminator3D", "init_discriminator_weights"]


def init_discriminator_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv3d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm3d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class NLayerDiscriminator3D(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 5, dropout: float = 0.3) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1; got {n_layers}")
        seq: list[nn.Module] = [nn.Conv3d(input_nc, ndf, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n == 1 else (1, 2, 2)
            seq += [
                nn.Conv3d(ndf * prev, ndf * mult, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(ndf * mult),
                nn.LeakyReLU(0.2, True),
                nn.Dropout(dropout),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv3d(ndf * prev, ndf * mult, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm3d(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Dropout(dropout),
            nn.Conv3d(ndf * mult, 1, 3, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*seq)
        self.apply(init_discriminator_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"NLayerDiscriminator3D expects [B, C, T, H, W]; got shape {tuple(x.shape)}")
        return self.main(x)
