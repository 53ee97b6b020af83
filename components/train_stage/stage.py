"""`run_stage`: one training stage of the pipeline (`docs/pipeline.md`) as a plain function.

It checks its inputs (stage/recipe pairing, clip table, weight files and what they are), launches the recipe
through torchx `local_cwd` -> torchrun (`soraflow.training.launch.run_local`, restarts resume from the last
checkpoint), then gathers what the next step needs: the exported weights, the resolved recipe, a model card,
the metrics (losses and the goodput summary) and the sample videos the trainer wrote.

Inputs by stage:

| stage | init_from | autoencoder |
| --- | --- | --- |
| vae_train | optional DC-AE weights to continue from (e.g. phase 2 from phase 1) | - |
| dit_stage1 | optional FLUX-layout checkpoint (converted on load) | HunyuanVideo VAE weights (tiny: optional) |
| dit_stage2, dit_stage3 | the previous stage's model.safetensors | as stage 1 |
| distill | the stage-3 model.safetensors (required) | the Video DC-AE weights from vae_train |
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from soraflow.common.atomic import write_text_atomic
from soraflow.common.stages import AE_FROM_STAGE, AE_STAGES, INIT_FROM_STAGE, STAGES

log = logging.getLogger("soraflow.train_stage")



@dataclass
class StageOutputs:
    stage: str
    recipe: str
    run_dir: str
    model_path: str  # safetensors in the official key layout
    config_path: str  # resolved recipe (JSON)
    card_path: str  # model card (Markdown)
    metrics_path: str  # losses + goodput summary (JSON)
    samples_dir: str  # sample videos written during training
    steps: int
    final_loss: float | None


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # metadata only: no torch in the launching task
            return f.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


def _check_file(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist (or is not a file)")
    if p.suffix != ".safetensors":
        raise ValueError(f"{what}: {p} must be a .safetensors file")
    return p


def _validate(stage, recipe, data_table, init_from, autoencoder, overrides):
    from soraflow.training.config import resolve
    from soraflow.training.recipes import get_recipe

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {list(STAGES)}")
    if get_recipe(recipe).stage != stage:  # unknown recipe -> ValueError naming the known ones
        raise ValueError(f"recipe {recipe!r} is a {get_recipe(recipe).stage} recipe, not a {stage} one")
    # unknown keys, wrong types and out-of-range values fail here, before any process starts
    cfg = resolve(recipe, dict(overrides or {}))
    table = data_table or cfg.data.table
    if not table:
        raise ValueError(f"stage {stage}: no clip table (give data_table or override data.table)")
    if not Path(table).is_file():
        raise FileNotFoundError(f"data_table: {table} does not exist")
    from soraflow.common.clip_table import load_table

    try:
        rows = load_table(table)
    except Exception as exc:
        raise ValueError(f"data_table: {table} is not a readable clip table ({exc})") from exc
    if len(rows) == 0:
        raise ValueError(f"data_table: {table} has no rows")

    init = _check_file(init_from, "init_from")
    if stage == "distill" and init is None:
        raise ValueError("distill starts from the stage-3 weights: give init_from (dit_stage3's model.safetensors)")
    if init is not None:
        meta = _safetensors_metadata(init)
        made_by = meta.get("stage")
        if stage == "dit_stage1":
            if made_by is not None and not made_by.startswith("dit_"):
                raise ValueError(f"init_from: {init} is a {made_by} export; dit_stage1 takes a FLUX-layout or "
                                 "MMDiT checkpoint")
        elif made_by is not None and made_by not in INIT_FROM_STAGE[stage]:
            raise ValueError(f"init_from: {init} is a {made_by} export (config {meta.get('config')}); {stage} "
                             f"starts from a {' or '.join(INIT_FROM_STAGE[stage])} export")
    ae = _check_file(autoencoder, "autoencoder")
    if ae is not None:
        if stage in AE_STAGES:
            raise ValueError(f"{stage} trains the autoencoder: pass its starting weights as init_from")
        made_by = _safetensors_metadata(ae).get("stage")
        if made_by is not None and made_by != AE_FROM_STAGE[stage]:
            raise ValueError(f"autoencoder: {ae} is a {made_by} export, not autoencoder weights ({stage} decodes "
                             f"with a {AE_FROM_STAGE[stage]} export)")
        if stage == "distill" and cfg.ae.kind != "dcae" or stage != "distill" and cfg.ae.kind != "hunyuan":
            raise ValueError(f"autoencoder: recipe {recipe!r} uses a {cfg.ae.kind} autoencoder for {stage}")
    elif stage not in AE_STAGES and not cfg.ae.tiny and not (cfg.ae.path and Path(cfg.ae.path).is_file()):
        raise FileNotFoundError(f"autoencoder: recipe {recipe!r} expects {cfg.ae.path}; give autoencoder=...")
    return cfg, table, init, ae


def stage_overrides(stage: str, table: str, init: Path | None, ae: Path | None, overrides: dict | None) -> dict:
    """The dotted-key overrides that wire a stage's inputs into its recipe."""
    out = {"data.table": str(table)}
    if init is not None:
        if stage in AE_STAGES:
            out["ae.path"] = str(init)
        elif stage == "dit_stage1" and "recipe" not in _safetensors_metadata(init):
            out["model.from_flux"] = str(init)  # not one of our exports: a FLUX-layout file
        else:
            out["model.from_pretrained"] = str(init)
    if ae is not None:
        out["ae.path"] = str(ae)
    out.update(overrides or {})
    return out


def _losses(run_dir: Path) -> list[list]:
    """(step, loss) of the run, the last attempt's value where a restart repeated a step."""
    by_step: dict[int, float] = {}
    path = run_dir / "goodput_events.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed attempt
            if ev.get("ev") == "step" and "loss" in ev:
                by_step[int(ev["step"])] = float(ev["loss"])
    return [[s, by_step[s]] for s in sorted(by_step)]


def _figures(run_dir: Path, goodput: dict) -> dict:
    """Per-stage training figures: step-time breakdown (loader wait, encoders), tokens/s, MFU, goodput."""
    from soraflow.training.goodput import mfu, read_events, step_time_breakdown

    out = step_time_breakdown(read_events(str(run_dir / "goodput_events.jsonl")))
    out["mfu"] = mfu(out.get("flops_per_second"), float(goodput.get("peak_flops") or 0.0),
                     int(goodput.get("num_devices") or 1))
    out["peak_flops"], out["peak_flops_source"] = goodput.get("peak_flops"), goodput.get("peak_flops_source")
    out["goodput_ratio"] = goodput.get("goodput_ratio")
    out["badput_seconds"] = goodput.get("badput_seconds")
    out["wall_seconds"] = goodput.get("wall_seconds")
    return out


def _heldout(run_dir: Path) -> list[dict]:
    """The held-out evaluations of the run (heldout.jsonl), the last attempt's where a restart repeated a step."""
    by_step: dict[int, dict] = {}
    path = run_dir / "heldout.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_step[int(ev["step"])] = ev
    return [by_step[s] for s in sorted(by_step)]


def _data_revision(run_dir: Path) -> str | None:
    metas = sorted((run_dir / "checkpoints").glob("step-*/metadata.json"))
    if not metas:
        return None
    return json.loads(metas[-1].read_text()).get("data_revision")


def _failure_tail(log_dir: Path, n: int = 15) -> str:
    """The worker's own error (the end of the last Python traceback in a worker's log), then the end of the
    launcher's log. torchrun's summary alone ("soraflow.training.train FAILED ... exitcode 1") names no cause."""
    worker, summary = [], []
    for f in sorted(log_dir.rglob("stderr*")):
        text = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        starts = [i for i, ln in enumerate(text) if ln.startswith("Traceback (most recent call last)")]
        if starts and "attempt_" in str(f):
            worker = text[starts[-1]:][-n:]
        summary = text[-n:] or summary
    return "\n".join((worker + ["..."] if worker else []) + summary)


def _card(stage, recipe, cfg: dict, init, ae, table, revision, steps, final_loss, goodput, model_path) -> str:
    tokens = goodput.get("tokens_total") or goodput.get("tokens")
    rows = [
        ("stage", stage), ("recipe", recipe), ("model config", cfg.get("model", {}).get("config")
                                               if stage not in AE_STAGES else f"{cfg['ae']['kind']} ({cfg['ae']})"),
        ("initialised from", str(init) if init else "random init"), ("autoencoder", str(ae) if ae else
                                                                     cfg["ae"].get("path") or "recipe default"),
        ("data table", table), ("data revision", revision), ("steps", steps), ("final loss", final_loss),
        ("tokens", tokens), ("goodput", goodput.get("goodput_ratio")), ("weights", model_path),
    ]
    if stage in AE_STAGES:
        rows.append(("perceptual term", cfg["vae"].get("perceptual_term")))
        rows.append(("exported weights", f"EMA (decay {cfg['vae'].get('ema_decay')})"))
    if cfg.get("model", {}).get("reinit") and stage == "distill":
        rows.append(("re-initialised", ", ".join(cfg["model"]["reinit"])))
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# Model card: {stage} ({recipe})\n\n| field | value |\n| --- | --- |\n{body}\n\n"
            f"Resolved recipe: `config.json`. Metrics: `stage_metrics.json`. Samples: `samples/`.\n")


class StageFailed(RuntimeError):
    """The training job of a stage did not succeed; the message has its state, run folder and last log lines."""


def run_stage(stage: str, *, recipe: str, run_dir: str, data_table: str | None = None, init_from: str | None = None,
              autoencoder: str | None = None, overrides: dict | None = None, nproc: int = 1,
              max_restarts: int = 3, scheduler: str = "local_cwd", nnodes: int = 1, image: str = "",
              queue: str = "default", namespace: str | None = None, progress=None) -> StageOutputs:
    """`scheduler="kubernetes"` submits a Volcano gang job of `nnodes` x `nproc` GPUs running `image` and
    follows it; `run_dir` (and the table) must then be on a volume those pods mount. `progress(line)` gets
    rank 0's step lines while a local job runs."""
    from soraflow.training.launch import LaunchSpec, cluster_job_name, run_kubernetes, run_local

    if scheduler not in ("local_cwd", "kubernetes"):
        raise ValueError(f"scheduler must be 'local_cwd' or 'kubernetes', got {scheduler!r}")

    _, table, init, ae = _validate(stage, recipe, data_table, init_from, autoencoder, overrides)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    spec = LaunchSpec(recipe=recipe, run_dir=str(run), nproc_per_node=nproc, max_restarts=max_restarts,
                      overrides=stage_overrides(stage, table, init, ae, overrides), nnodes=nnodes)
    log_dir = run / "torchx-logs"
    if scheduler == "kubernetes":
        spec.gpus_per_node = nproc
        spec.image = image or spec.image
        # one job name per run folder: a retried task follows (or cleanly resubmits) its own job, never a second
        job = cluster_job_name(hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:10], stage)
        status = run_kubernetes(spec, queue=queue, namespace=namespace, job_name=job)
    else:
        status = run_local(spec, log_dir=str(log_dir), progress=progress)
    state = str(status.state) if status is not None else "unknown"
    model_path = run / "model.safetensors"
    if not state.endswith("SUCCEEDED") or not model_path.exists():
        raise StageFailed(f"stage {stage} (recipe {recipe}) ended {state}; run dir {run}; last log lines:\n"
                           f"{_failure_tail(log_dir)}")

    cfg = json.loads((run / "config.json").read_text())
    goodput = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    losses = _losses(run)
    steps = losses[-1][0] if losses else 0
    final_loss = losses[-1][1] if losses else None
    metrics_path = run / "stage_metrics.json"
    write_text_atomic(metrics_path, json.dumps({"stage": stage, "recipe": recipe, "steps": steps,
                                                "final_loss": final_loss, "losses": losses, "goodput": goodput,
                                                "heldout": _heldout(run), "figures": _figures(run, goodput)},
                                               indent=1))
    card_path = run / "MODEL_CARD.md"
    write_text_atomic(card_path, _card(stage, recipe, cfg, init, ae, table, _data_revision(run), steps, final_loss,
                                       goodput, model_path))
    return StageOutputs(stage=stage, recipe=recipe, run_dir=str(run), model_path=str(model_path),
                        config_path=str(run / "config.json"), card_path=str(card_path),
                        metrics_path=str(metrics_path), samples_dir=str(run / "samples"), steps=steps,
                        final_loss=final_loss)
