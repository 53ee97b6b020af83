"""How the HunyuanVideo VAE is run: activation checkpointing from outside the model (docs/architecture.md, "Models
hold architecture only"). The units are the encoder's down blocks and mid block and the decoder's mid block and up
blocks, the parts diffusers' own gradient checkpointing recomputes."""

from __future__ import annotations

from soraflow.models.hunyuan_vae import HunyuanVideoVAE
from soraflow.training.parallel.checkpointing import set_activation_checkpointing


def checkpoint_units(vae: HunyuanVideoVAE) -> list:
    enc, dec = vae.encoder, vae.decoder
    return [*enc.down_blocks, enc.mid_block, dec.mid_block, *dec.up_blocks]


def apply_activation_checkpointing(vae: HunyuanVideoVAE, enabled: bool = True) -> HunyuanVideoVAE:
    """Recompute every unit in backward when its input carries a gradient (`enabled=False` undoes it)."""
    set_activation_checkpointing(checkpoint_units(vae), enabled)
    return vae
