"""Pipeline step: one training stage (vae_train, dit_stage1/2/3, distill) as a plain function."""

from .stage import STAGES, StageOutputs, run_stage

__all__ = ["STAGES", "StageOutputs", "run_stage"]
