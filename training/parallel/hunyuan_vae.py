"""How the HunyuanVideo VAE is run: activation checkpointing from outside the model (docs/architecture.md, "Models
hold architecture only"). The units are the encoder's down blocks and mid block and the decoder's mid block and up
blocks, the parts diffusers' own gradient checkpointing recomputes."""

from __future__ import annotations

from soraflow.models.hunyuan_vae import HunyuanVideoVAE
from soraflow.training.parallel.checkpointing import (checkpoint_module, grad_enabled_and_input_requires_grad,
                                             remove_checkpointing)


def checkpoint_units(vae: HunyuanVideoVAE) -> list:
    enc, dec = vae.encoder, vae.decoder
    return [*enc.down_blocks, enc.mid_block, dec.mid_block, *dec.up_blocks]


def apply_activation_checkpointing(vae: HunyuanVideoVAE, enabled: bool = True) -> HunyuanVideoVAE:
    """Recompute every unit in backward when its input carries a gradient (`enabled=False` undoes it)."""
    for unit in checkpoint_units(vae):
        if enabled:
            checkpoint_module(unit, grad_enabled_and_input_requires_grad)
        else:
            remove_checkpointing(unit)
    return vae
