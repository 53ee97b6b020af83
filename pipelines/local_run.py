"""The embedded default (`docs/pipeline.md`, "Two ways to run"): the whole DAG through KFP's local runner, on generated sample videos, with
the tiny CPU recipes. Each step runs as a subprocess of this interpreter with the real KFP executor; training
steps start torchrun through torchx `local_cwd`.

Re-running in the same output folder after a failure resumes: ingest and filter come from KFP's local cache
(their inputs are unchanged), and each training stage resumes from its last checkpoint: its run folder is named
by a hash of its recipe, overrides and input bytes (`soraflow.components.train_stage.artifacts.stage_key`), so an
unchanged stage finds its folder again and a changed one starts fresh.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from soraflow.components.sample_data.generate import DEMO_FILTER_SETTINGS
from soraflow.pipelines.dag import GPU_RECIPES, TINY_RECIPES, build_pipeline
from soraflow.pipelines.settings import ClusterSettings

TASKS = {"data_pull": "data-pull-component", "ingest": "ingest-component", "filter": "filter-component", "split": "split-component",
         "vae_train": "vae-train-component", "hunyuan_vae_train": "hunyuan-vae-component",
         "dit_stage1": "dit-stage-component", "dit_stage2": "dit-stage-component-2",
         "dit_stage3": "dit-stage-component-3", "distill": "distill-component", "eval": "eval-component"}
_ERROR_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|Exit)\b.*:")


class PipelineRunError(RuntimeError):
    """A step failed; the message names the step and its own error."""


@dataclass
class LocalRun:
    out_dir: Path
    run_dir: Path  # the KFP local run's folder: one subfolder per task with its artifacts
    seconds: float
    report_html: Path | None
    summary_md: Path | None
    outputs: dict = field(default_factory=dict)  # the pipeline's outputs (curated, stage1..3, distilled, ...) -> path
    learning: dict | None = None  # the eval's learning checks (components/eval/learning.py)


class _TailStdout(io.TextIOBase):
    """Passes the runner's output through and keeps the last lines, to name a failed step's own error."""

    def __init__(self, stream, keep: int = 400):
        self.stream, self.lines = stream, deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.lines.extend(text.splitlines())
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def last_error(self) -> str | None:
        return next((line.strip() for line in reversed(self.lines) if _ERROR_LINE.match(line)), None)


def _newest_run(pipeline_root: Path, before: set[Path]) -> Path | None:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


# Profiles: recipes and eval settings for the whole DAG on one machine. "cpu" is `make demo` (2 cores): the
# tiny recipes, eval samples at 9 x 64 x 64 with 8 sampler steps, 2 seeds per held-out caption. "gpu" is one
# 80-141 GB GPU: the gpu-demo recipes, eval samples at 33 x 128 x 256 (the held-out view every stage is scored
# on) with 30 sampler steps. The cpu profile's step settings (`overrides`, under the user's own) scale the
# filter's 768px size rule to the sample set; the gpu profile's clips are the same, so it does too.
PROFILES = {
    "cpu": {"recipes": TINY_RECIPES, "eval": {"eval_num_frames": 9, "eval_height": 64, "eval_width": 64,
                                              "eval_steps": 8, "eval_seeds": "0,1"},
            "overrides": {"filter": DEMO_FILTER_SETTINGS}},
    "gpu": {"recipes": GPU_RECIPES, "eval": {"eval_num_frames": 33, "eval_height": 128, "eval_width": 256,
                                             "eval_steps": 30, "eval_seeds": "0,1"},
            "overrides": {"filter": DEMO_FILTER_SETTINGS}},
}


def merge_overrides(base: dict, extra: dict) -> dict:
    """`extra` over `base`, mapping by mapping (a user's `thresholds_768.motion_min` keeps the profile's
    `thresholds_768.min_short_side`)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_overrides(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


@contextlib.contextmanager
def _thread_env():
    """Every task (and the trainers they start) inherits this environment: OpenMP threads that sleep when idle
    (soraflow.training.launch.cpu_thread_env), set for the run and restored after it. The thread count is left to each
    process (torch: one per core; the training launcher divides the cores among its workers)."""
    import os

    from soraflow.training.launch import cpu_thread_env

    added = {k: v for k, v in cpu_thread_env().items() if k != "OMP_NUM_THREADS"}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def validate_run(recipes: dict, overrides: dict) -> None:
    """Every step's recipe and overrides, checked before the first task starts (a typo in the distill overrides
    used to surface only when distill was reached, minutes in). Raises ConfigError listing every problem."""
    import difflib
    import inspect

    from soraflow.components.filter import THRESHOLDS_256, as_thresholds, run_filter
    from soraflow.components.ingest import ingest
    from soraflow.training.config import ConfigError, resolve
    from soraflow.training.recipes import get_recipe

    problems = []
    steps = set(TINY_RECIPES) | {"ingest", "filter", "split", "eval"}
    for step in overrides:
        if step not in steps:
            near = difflib.get_close_matches(step, steps, n=1)
            problems.append(f"overrides name unknown step {step!r}" + (f" (did you mean {near[0]}?)" if near else ""))
    for step, recipe in recipes.items():
        try:
            made_for = get_recipe(recipe).stage
            if made_for != step:
                problems.append(f"{step}: recipe {recipe!r} is a {made_for} recipe")
                continue
            resolve(recipe, overrides.get(step, {}))
        except ConfigError as exc:
            problems.append(f"{step}: {exc}")
    for step, fn in (("ingest", ingest), ("filter", run_filter)):
        known = [k for k in inspect.signature(fn).parameters if k not in ("inputs", "table", "out_dir")]
        for key, value in overrides.get(step, {}).items():
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                problems.append(f"{step}: unknown setting {key!r}" + (f" (did you mean {near[0]}?)" if near else ""))
            elif step == "filter" and key in ("thresholds_256", "thresholds_768"):
                try:
                    as_thresholds(value, THRESHOLDS_256, f"filter.{key}")
                except ValueError as exc:
                    problems.append(str(exc))
    if problems:
        raise ConfigError("the run's recipes or overrides are wrong (nothing was started):\n  " + "\n  ".join(problems))


def _pipeline_source(out: Path, raw_manifest: str | None, data_revision: str | None,
                     dvc_remote: str | None) -> dict:
    """The pipeline's inputs that say where its data comes from: a raw manifest (default: the generated sample
    videos, made once under `out/raw`) with its digest, or a dataset revision and the DVC remote holding it."""
    if data_revision is not None:
        if raw_manifest is not None:
            raise ValueError("give raw_manifest or data_revision, not both")
        if dvc_remote is None:
            from soraflow.common.dvc import remote_url

            dvc_remote = remote_url(Path.cwd())
            if dvc_remote is None:
                raise ValueError("no DVC remote configured here: give dvc_remote (or --dvc-remote)")
        return {"data_revision": data_revision, "dvc_remote": str(dvc_remote)}
    if raw_manifest is None:
        from soraflow.components.sample_data.generate import DEMO_SAMPLE_SET, make_sample_videos

        manifest = out / "raw" / "manifest.csv"
        raw_manifest = str(manifest if manifest.is_file() else make_sample_videos(out / "raw", **DEMO_SAMPLE_SET))
    from soraflow.components.ingest.ingest import manifest_digest

    return {"raw_manifest": str(raw_manifest), "raw_manifest_digest": manifest_digest(raw_manifest)}


def _publish(out: Path, outputs: dict[str, Path]) -> dict:
    """The run's results where people look for them: `out/curated` (a link to the curated set, which
    `soraflow data version --from OUT/curated` takes) and the eval report with its images; returns metrics.json."""
    link = out / "curated"
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(outputs["curated"], target_is_directory=True)
    results = outputs["eval_results"]
    # the report's images are relative to it: bring them along, so out/report.html shows them
    for folder in ("plots", "thumbs"):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
        if (results / folder).is_dir():
            shutil.copytree(results / folder, out / folder)
    shutil.copyfile(results / "report.html", out / "report.html")
    shutil.copyfile(results / "report.md", out / "report.md")
    return json.loads((results / "metrics.json").read_text())


def run_pipeline_locally(out_dir: str, *, raw_manifest: str | None = None, overrides: dict | None = None,
                         recipes: dict | None = None, nproc: int = 1, eval_suite: str = "heldout",
                         profile: str = "cpu", data_revision: str | None = None,
                         dvc_remote: str | None = None, hunyuan_vae: str | None = None) -> LocalRun:
    """Run the DAG; returns where its artifacts are. Raises PipelineRunError naming the failed step's error.

    `hunyuan_vae`: HunyuanVideo VAE weights for stages 1-3 (then the hunyuan_vae step trains nothing).

    With `data_revision` (a data.dvc md5) the retraining pipeline runs instead: it fetches that curated dataset
    from `dvc_remote` (default: this repository's DVC remote) and starts at training."""
    from kfp import local

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles: {sorted(PROFILES)}")
    if hunyuan_vae is not None:
        if not Path(hunyuan_vae).is_file():
            raise FileNotFoundError(f"hunyuan_vae: {hunyuan_vae} is not a file (HunyuanVideo VAE safetensors)")
        hunyuan_vae = str(Path(hunyuan_vae).resolve())

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipes = {**PROFILES[profile]["recipes"], **(recipes or {})}
    unknown = set(recipes) - set(TINY_RECIPES)
    if unknown:
        raise ValueError(f"recipes for unknown step(s) {sorted(unknown)}; steps: {sorted(TINY_RECIPES)}")
    overrides = merge_overrides(PROFILES[profile].get("overrides", {}), overrides or {})
    validate_run(recipes, overrides)
    source = _pipeline_source(out, raw_manifest, data_revision, dvc_remote)
    root = out / "pipeline-root"
    root.mkdir(exist_ok=True)
    before = set(root.iterdir())
    # KFP's local cache serves ingest/filter again on a re-run; the others opt out (set_caching_options(False))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=True, cache_root=str(out / "kfp-cache"))
    # no task retries here: torchrun already restarts crashed workers, and a bad input fails the same way again
    pipeline = build_pipeline(ClusterSettings(train_launcher="in_pod", train_retries=0, pushgateway=""),
                              start="raw" if data_revision is None else "revision")
    tail = _TailStdout(sys.stdout)
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(tail), warnings.catch_warnings(), _thread_env():
            # expected here: the local runner ignores pod settings and runs the images' code in this interpreter
            warnings.filterwarnings("ignore", message=r".*(have no effect in the current local runner|"
                                                      r"non-Python base image).*")
            task = pipeline(**source, vae_recipe=recipes["vae_train"],
                     hunyuan_vae_recipe=recipes["hunyuan_vae_train"],
                     stage1_recipe=recipes["dit_stage1"], stage2_recipe=recipes["dit_stage2"],
                     stage3_recipe=recipes["dit_stage3"], distill_recipe=recipes["distill"],
                     run_root=str(out / "runs"), run_tag="local",
                     train_scheduler="local_cwd", nproc=nproc, overrides=json.dumps(overrides),
                     eval_suite=eval_suite, hunyuan_vae=hunyuan_vae or "", **PROFILES[profile]["eval"])
    except RuntimeError as exc:
        failed = re.search(r"Inner task failed: \W*\[?\d*m?'?([\w-]+)", str(exc))
        step = next((s for s, t in TASKS.items() if failed and t == failed.group(1)), "a step")
        run_dir = _newest_run(root, before)
        raise PipelineRunError(
            f"local pipeline run failed in {step}: {tail.last_error() or exc}\n"
            f"earlier steps' artifacts are kept under {run_dir or root}; re-run the same command to resume"
        ) from exc
    seconds = time.time() - t0
    run_dir = _newest_run(root, before)
    if run_dir is None:
        raise RuntimeError(f"{root}: the local runner wrote no run folder")
    # artifacts served from KFP's cache live in the earlier run's folder: the pipeline outputs say where
    outputs = {name: Path(artifact.uri) for name, artifact in task.outputs.items()}
    doc = _publish(out, outputs)
    return LocalRun(out, run_dir, seconds, out / "report.html", out / "report.md", outputs,
                    learning=doc.get("learning"))
