"""Glue between `run_stage` and KFP artifacts: where a stage's run folder lives, and what its Model artifact
holds. Plain functions, so they are tested without KFP; the components in component.py only call them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from soraflow.common.clip_table import HELDOUT_FILE, SET_FILES
from soraflow.common.digests import file_sha256
from soraflow.common.stages import DATA_SET_BY_STAGE, OTHER_STEPS, STAGES
from soraflow.components.train_stage.stage import StageOutputs, run_stage

MODEL_FILE = "model.safetensors"
AE_FILE = "autoencoder.safetensors"
INIT_FILE = "init.safetensors"
REFERENCE_FILE = "weights.json"  # an autoencoder artifact that points at given weights instead of holding them  # the network as it was at step 0 (recipes with heldout.export_init)


def step_overrides(stage: str, overrides_json: str) -> dict:
    """The pipeline passes one JSON object {step: {dotted.key: value}}; each step takes its own entry."""
    try:
        allsteps = json.loads(overrides_json or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"pipeline parameter 'overrides' is not JSON: {exc}") from exc
    if not isinstance(allsteps, dict):
        raise ValueError("pipeline parameter 'overrides' must be a JSON object {step: {key: value}}")
    unknown = set(allsteps) - set(STAGES) - set(OTHER_STEPS)
    if unknown:
        raise ValueError(f"pipeline parameter 'overrides' names unknown step(s) {sorted(unknown)}")
    return dict(allsteps.get(stage, {}))


def stage_key(stage: str, recipe: str, overrides: dict, inputs: list[str | None]) -> str:
    """What a stage's checkpoints are a function of: recipe, overrides and the bytes of its input weights. A task
    with the same key resumes the same run folder; any change starts a fresh one (never a wrong resume)."""
    h = hashlib.sha256(json.dumps([stage, recipe, overrides], sort_keys=True, default=str).encode())
    for path in inputs:
        h.update((file_sha256(path) if path else "-").encode())
    return h.hexdigest()[:12]


def stage_run_dir(run_root: str, run_id: str, stage: str, artifact_path: str, key: str = "") -> str:
    """Checkpoints live on the data volume keyed by pipeline run, stage and `stage_key`, so a retried task (a new
    pod) or a re-run with the same run tag finds and resumes them; without a run root they sit beside the
    artifact."""
    root = run_root or os.path.join(os.path.dirname(artifact_path), "run")
    return os.path.join(root, run_id or "local", f"{stage}-{key}" if key else stage)


def model_file(artifact_path: str | None) -> str | None:
    """The weights inside an upstream Model artifact (a folder), or None when the input was not given."""
    if not artifact_path:
        return None
    path = Path(artifact_path) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{artifact_path}: the upstream Model artifact has no {MODEL_FILE}")
    return str(path)


def autoencoder_file(artifact_path: str | None) -> str | None:
    """The autoencoder weights an autoencoder step's Model artifact stands for: its own trained file, or the
    file it only records (`reference_weights`)."""
    if not artifact_path:
        return None
    ref = Path(artifact_path) / REFERENCE_FILE
    if ref.is_file():
        return json.loads(ref.read_text())["weights"]
    return model_file(artifact_path)


def reference_weights(weights: str, artifact_path: str) -> dict:
    """An autoencoder step given existing weights: check the file and record its path (no copy of a 1 GB file)."""
    path = Path(weights)
    if not path.is_file() or path.suffix != ".safetensors":
        raise FileNotFoundError(f"hunyuan_vae: {path} is not a .safetensors file")
    dest = Path(artifact_path)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / REFERENCE_FILE).write_text(json.dumps({"weights": str(path.resolve()), "sha256": file_sha256(path)}))
    return {"stage": "hunyuan_vae_train", "trained": False, "weights": str(path.resolve())}


def publish(outputs: StageOutputs, artifact_path: str) -> dict:
    """Copy what the next step and a reader need into the Model artifact folder; returns its metadata."""
    dest = Path(artifact_path)
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in ((outputs.model_path, MODEL_FILE), (outputs.config_path, "config.json"),
                      (outputs.card_path, "MODEL_CARD.md"), (outputs.metrics_path, "metrics.json")):
        shutil.copy2(src, dest / name)
    for name in (AE_FILE, INIT_FILE, "heldout.jsonl"):
        # the seeded random AE a tiny stage trained on, the network at step 0, the held-out curve (if any)
        extra = Path(outputs.run_dir) / name
        if extra.is_file():
            shutil.copy2(extra, dest / name)
    if outputs.samples_dir and Path(outputs.samples_dir).is_dir():
        shutil.copytree(outputs.samples_dir, dest / "samples", dirs_exist_ok=True)
    meta = {"stage": outputs.stage, "recipe": outputs.recipe, "steps": outputs.steps, "file": MODEL_FILE}
    if outputs.final_loss is not None:
        meta["final_loss"] = float(outputs.final_loss)
    return meta


def text_encoder_overrides(text_encoders: str) -> dict:
    """A folder laid out like Open-Sora's ckpts/ (google/t5-v1_1-xxl, openai/clip-vit-large-patch14)."""
    if not text_encoders:
        return {}
    t5, clip = Path(text_encoders) / "google/t5-v1_1-xxl", Path(text_encoders) / "openai/clip-vit-large-patch14"
    for folder in (t5, clip):
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoders: {folder} does not exist (expected Open-Sora's ckpts/ layout)")
    return {"text.t5": str(t5), "text.clip": str(clip), "text.tiny": False}


def train_step(stage: str, *, recipe: str, dataset_path: str, model_artifact_path: str, init_from: str | None,
               autoencoder: str | None, run_root: str, run_id: str, overrides_json: str, text_encoders: str = "",
               scheduler: str = "local_cwd", nnodes: int = 1, nproc: int = 1, image: str = "",
               queue: str = "default", namespace: str | None = None) -> dict:
    """Run one training stage on the filter step's dataset and fill the Model artifact; returns its metadata."""
    table = os.path.join(dataset_path, SET_FILES[DATA_SET_BY_STAGE[stage]])
    heldout = os.path.join(dataset_path, HELDOUT_FILE)
    overrides = {**text_encoder_overrides(text_encoders),
                 **({"heldout.table": heldout} if os.path.isfile(heldout) else {}),
                 **step_overrides(stage, overrides_json)}
    key = stage_key(stage, recipe, overrides, [init_from, autoencoder, table])
    run_dir = stage_run_dir(run_root, run_id, stage, model_artifact_path, key)
    if scheduler == "kubernetes":  # the job's pods see the shared volume, not this task's artifact folder
        if not run_root:
            raise ValueError(f"{stage}: a kubernetes-scheduled stage needs run_root on the shared data volume")
        shared = Path(run_dir) / "data" / Path(table).name
        shared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(table, shared)
        table = str(shared)
        if "heldout.table" in overrides and overrides["heldout.table"] == heldout:
            shutil.copy2(heldout, shared.parent / HELDOUT_FILE)
            overrides["heldout.table"] = str(shared.parent / HELDOUT_FILE)
    outputs = run_stage(stage, recipe=recipe, run_dir=run_dir, data_table=table, init_from=init_from,
                        autoencoder=autoencoder, overrides=overrides, nproc=nproc, scheduler=scheduler,
                        nnodes=nnodes, image=image, queue=queue, namespace=namespace)
    return publish(outputs, model_artifact_path)
