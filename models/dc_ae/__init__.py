"""Video DC-AE (4x32x32, 128 latent channels) of Open-Sora 2.0, plus its GAN-training pieces
(docs/models.md#video-dc-ae, #autoencoder-training)."""

from .discriminator import NLayerDiscriminator3D
from .layers import (
    ChannelDuplicatingPixelShuffle,
    EfficientViTBlock,
    GLUMBConv,
    LiteMLA,
    PixelUnshuffleChannelAveraging,
    ResBlock,
    RMSNorm3d,
    relu_linear_attention,
)
from .losses import adaptive_disc_weight, generator_loss, hinge_d_loss, reconstruction_nll
from .model import DCAEConfig, VideoDCAE, init_dc_ae_weights

__all__ = [
    "DCAEConfig",
    "VideoDCAE",
    "init_dc_ae_weights",
    "NLayerDiscriminator3D",
    "adaptive_disc_weight",
    "generator_loss",
    "hinge_d_loss",
    "reconstruction_nll",
    "RMSNorm3d",
    "ResBlock",
    "LiteMLA",
    "GLUMBConv",
    "EfficientViTBlock",
    "PixelUnshuffleChannelAveraging",
    "ChannelDuplicatingPixelShuffle",
    "relu_linear_attention",
]
