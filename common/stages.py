"""The names of the pipeline's training stages, and what each one reads: the one list the trainer's config,
the stage runner, the DAG, the local runner, the CLI and the eval's checks all use (`docs/pipeline.md`).

A recipe names its stage (`TrainConfig.stage`); a stage name is also the key of its recipe and its overrides
in a pipeline run (`--recipe dit_stage1=...`, `--override dit_stage1.max_steps=...`).
"""

from __future__ import annotations

__all__ = ["STAGES", "AE_STAGES", "DIT_STAGES", "AE_KIND", "DATA_SET_BY_STAGE", "INIT_FROM_STAGE",
           "AE_FROM_STAGE", "OTHER_STEPS"]

AE_STAGES = ("vae_train", "hunyuan_vae_train")  # train an autoencoder
DIT_STAGES = ("dit_stage1", "dit_stage2", "dit_stage3", "distill")  # train a DiT on a frozen autoencoder
STAGES = AE_STAGES + DIT_STAGES
AE_KIND = {"vae_train": "dcae", "hunyuan_vae_train": "hunyuan"}  # which autoencoder an AE stage trains

# The curated set (soraflow.common.clip_table.SETS) each stage trains on: 256px for the autoencoders and stages 1-2,
# the stricter 768px set for stage 3 and the high-compression distillation.
DATA_SET_BY_STAGE = {"vae_train": "set_256px", "hunyuan_vae_train": "set_256px", "dit_stage1": "set_256px",
                     "dit_stage2": "set_256px", "dit_stage3": "set_768px", "distill": "set_768px"}
# What a stage's init_from must be an export of (the `stage` metadata the trainer writes); a stage may also
# continue from its own export.
INIT_FROM_STAGE = {"dit_stage2": ("dit_stage1", "dit_stage2"), "dit_stage3": ("dit_stage2", "dit_stage3"),
                   "distill": ("dit_stage3",), "vae_train": ("vae_train",),
                   "hunyuan_vae_train": ("hunyuan_vae_train",)}
# Which autoencoder export each DiT stage decodes with.
AE_FROM_STAGE = {"dit_stage1": "hunyuan_vae_train", "dit_stage2": "hunyuan_vae_train",
                 "dit_stage3": "hunyuan_vae_train", "distill": "vae_train"}
# The pipeline's steps that are not training stages (they take overrides too).
OTHER_STEPS = ("ingest", "filter", "split", "eval")
