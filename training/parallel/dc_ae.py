"""How the Video DC-AE is run: activation checkpointing from outside the model (docs/architecture.md, "Models hold
architecture only"). The units: every encoder and decoder stage, the encoder's project_out and the decoder's
project_in and project_out (the encoder's project_in, the first op, runs plainly)."""

from __future__ import annotations

from soraflow.models.dc_ae import VideoDCAE
from soraflow.training.parallel.checkpointing import set_activation_checkpointing


def checkpoint_units(ae: VideoDCAE) -> list:
    enc, dec = ae.encoder, ae.decoder
    return [*enc.stages, enc.project_out, dec.project_in, *dec.stages, dec.project_out]


def apply_activation_checkpointing(ae: VideoDCAE, enabled: bool = True) -> VideoDCAE:
    """Recompute every unit in backward when its input carries a gradient (`enabled=False` undoes it)."""
    set_activation_checkpointing(checkpoint_units(ae), enabled)
    return ae
