"""The embedded default (design §4): the whole DAG through KFP's local runner, on generated sample videos, with
the tiny CPU recipes. Each step runs as a subprocess of this interpreter with the real KFP executor; training
steps start torchrun through torchx `local_cwd`."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.dag import TINY_RECIPES, build_pipeline
from pipelines.settings import ClusterSettings

STEPS = ("ingest", "filter", "vae_train", "dit_stage1", "dit_stage2", "dit_stage3", "distill", "eval")


@dataclass
class LocalRun:
    out_dir: Path
    run_dir: Path  # the KFP local run's folder: one subfolder per task with its artifacts
    seconds: float
    report_html: Path | None
    summary_md: Path | None


def _newest_run(pipeline_root: Path, before: set[Path]) -> Path:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    if not runs:
        raise RuntimeError(f"{pipeline_root}: the local runner wrote no run folder")
    return max(runs, key=lambda p: p.stat().st_mtime)


def run_pipeline_locally(out_dir: str, *, raw_manifest: str | None = None, overrides: dict | None = None,
                         recipes: dict | None = None, nproc: int = 1, eval_suite: str = "mini",
                         quiet: bool = True) -> LocalRun:
    """Run the DAG; returns where its artifacts are. Raises RuntimeError naming the failed step."""
    from kfp import local

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if raw_manifest is None:
        from components.sample_data import make_sample_videos

        raw_manifest = str(make_sample_videos(out / "raw"))
    recipes = {**TINY_RECIPES, **(recipes or {})}
    unknown = set(recipes) - set(TINY_RECIPES)
    if unknown:
        raise ValueError(f"recipes for unknown step(s) {sorted(unknown)}; steps: {sorted(TINY_RECIPES)}")
    root = out / "pipeline-root"
    root.mkdir(exist_ok=True)
    before = set(root.iterdir())
    if quiet:  # the runner logs every task's full output at INFO; keep the task status lines
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipeline = build_pipeline(ClusterSettings(train_launcher="in_pod"))
    t0 = time.time()
    try:
        pipeline(raw_manifest=str(raw_manifest), vae_recipe=recipes["vae_train"],
                 stage1_recipe=recipes["dit_stage1"], stage2_recipe=recipes["dit_stage2"],
                 stage3_recipe=recipes["dit_stage3"], distill_recipe=recipes["distill"], run_root=str(out / "runs"),
                 train_scheduler="local_cwd", nproc=nproc, overrides=json.dumps(overrides or {}),
                 eval_suite=eval_suite)
    except RuntimeError as exc:
        raise RuntimeError(f"local pipeline run failed: {exc} (task folders under {root})") from exc
    seconds = time.time() - t0
    run_dir = _newest_run(root, before)
    report = next(run_dir.glob("eval-component/report"), None)
    summary = next(run_dir.glob("eval-component/summary"), None)
    if report is not None:
        shutil.copyfile(report, out / "report.html")
    if summary is not None:
        shutil.copyfile(summary, out / "report.md")
    return LocalRun(out, run_dir, seconds, out / "report.html" if report else None,
                    out / "report.md" if summary else None)
