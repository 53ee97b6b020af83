"""The Open-Sora 2.0 MMDiT."""

from .checkpoint import load_flux_checkpoint, load_mmdit_checkpoint, convert_flux_state_dict
from .config import CONFIGS, MMDiTConfig, get_config
from .model import MMDiT, mmdit_forward_flops

__all__ = [
    "CONFIGS",
    "MMDiT",
    "MMDiTConfig",
    "convert_flux_state_dict",
    "get_config",
    "load_flux_checkpoint",
    "load_mmdit_checkpoint",
    "mmdit_forward_flops",
]
