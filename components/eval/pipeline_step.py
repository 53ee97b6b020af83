"""Glue between the pipeline's Model artifacts and `run_eval`: which generation preset each trained model is,
and which autoencoder decodes it. A plain function so it is tested without KFP (component.py calls it)."""

from __future__ import annotations

import json
from pathlib import Path

from components.eval.eval import EvalModel, EvalResult, run_eval

# DiT config name (in the stage's resolved recipe) -> generation preset of components.generate.
PRESET_BY_DIT_CONFIG = {"opensora2-11b": "opensora2", "opensora2-hc": "opensora2-hc", "tiny": "tiny",
                        "tiny-hc": "tiny-hc"}
MODEL_FILE = "model.safetensors"
AE_FILE = "autoencoder.safetensors"  # the frozen autoencoder a stage trained on, when it had no weights file


def preset_of(model_dir: str) -> str:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: Model artifact has no config.json (the stage's resolved recipe)")
    name = json.loads(config.read_text())["model"]["config"]
    if name not in PRESET_BY_DIT_CONFIG:
        raise ValueError(f"{config}: DiT config {name!r} has no generation preset ({sorted(PRESET_BY_DIT_CONFIG)})")
    return PRESET_BY_DIT_CONFIG[name]


def eval_step(stage3_dir: str, distilled_dir: str, autoencoder_dir: str, out_dir: str, *, hunyuan_vae: str = "",
              text_encoders: str = "", reference_clips: str | None = None, num_frames: int = 129,
              **kwargs) -> EvalResult:
    """The stage-3 model and the distilled model side by side on the same prompts and seeds."""
    def weights(folder: str, name: str) -> str | None:
        path = Path(folder) / name
        return str(path) if path.is_file() else None

    stage3_ae = hunyuan_vae or weights(stage3_dir, AE_FILE)
    if stage3_ae is None:
        raise ValueError(f"{stage3_dir}: no {AE_FILE} in the stage-3 Model artifact and no hunyuan_vae given: "
                         "nothing to decode its latents with")
    models = [
        EvalModel("stage3", preset_of(stage3_dir), dit=weights(stage3_dir, MODEL_FILE), ae=stage3_ae,
                  weights_dir=text_encoders or None),
        # the Video DC-AE takes 4k frames where the HunyuanVideo VAE takes 4k+1 (128 vs 129 in the paper)
        EvalModel("distilled", preset_of(distilled_dir), dit=weights(distilled_dir, MODEL_FILE),
                  ae=weights(autoencoder_dir, MODEL_FILE), weights_dir=text_encoders or None,
                  num_frames=num_frames - num_frames % 4),
    ]
    return run_eval(models, out_dir, reference_clips=reference_clips, num_frames=num_frames, **kwargs)
