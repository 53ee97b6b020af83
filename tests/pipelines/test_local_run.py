"""The embedded default: the whole DAG through KFP's local runner on generated sample videos with the tiny CPU
recipes (`docs/pipeline.md`). One run, checked step by step: what each step read is what the previous one wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from soraflow.components.train_stage.artifacts import model_file, stage_key, stage_run_dir, step_overrides
from soraflow.pipelines.local_run import PipelineRunError, run_pipeline_locally

pytestmark = pytest.mark.slow
STEPS = {s: {"max_steps": 2} for s in ("vae_train", "hunyuan_vae_train", "dit_stage1", "dit_stage2", "dit_stage3",
                                       "distill")}


@pytest.fixture(scope="module")
def failed_then_rerun(tmp_path_factory):
    """A run that fails in dit_stage2 (a real stage-2 recipe whose full-size text encoders are not on this
    machine: a valid recipe, so only the stage itself can fail), then the same command with the tiny recipe in
    the same folder: the re-run must resume from what the first run produced. (Typos and unknown recipes never
    get this far: `soraflow run` rejects them before any step starts, tests/pipelines/test_cli_errors.py.)"""
    out = tmp_path_factory.mktemp("pipeline")
    # two steps per training stage keep each stage to seconds on 2 cores
    with pytest.raises(PipelineRunError) as failure:
        run_pipeline_locally(str(out), overrides=STEPS, recipes={"dit_stage2": "stage2-256px-i2v-h200x8"})
    (first,) = [p for p in (out / "pipeline-root").iterdir() if p.is_dir()]
    stage1_runs = sorted((out / "runs" / "local").glob("dit_stage1-*"))
    stage1_mtime = (stage1_runs[0] / "model.safetensors").stat().st_mtime_ns if stage1_runs else None
    run = run_pipeline_locally(str(out), overrides=STEPS)
    return {"error": str(failure.value), "first": first, "run": run, "out": out, "stage1_runs": stage1_runs,
            "stage1_mtime": stage1_mtime}


@pytest.fixture(scope="module")
def run(failed_then_rerun):
    return failed_then_rerun["run"]


def test_a_failed_step_names_its_error_and_keeps_earlier_work(failed_then_rerun):
    error, first = failed_then_rerun["error"], failed_then_rerun["first"]
    assert "failed in dit_stage2" in error
    for task in ("ingest-component", "filter-component", "dit-stage-component"):
        assert (first / task / "executor_output.json").is_file(), task
    assert not (first / "dit-stage-component-2" / "executor_output.json").exists()


def test_the_rerun_resumes_instead_of_redoing(failed_then_rerun):
    run = failed_then_rerun["run"]
    # ingest and filter come from KFP's local cache: the curated dataset is the first run's artifact
    curated, _ = _artifact(run, "filter-component", "curated")
    assert str(curated).startswith(str(failed_then_rerun["first"]))
    # stage 1 found its own run folder again (same recipe, overrides and input bytes) and did not train again
    assert sorted((failed_then_rerun["out"] / "runs" / "local").glob("dit_stage1-*")) == \
        failed_then_rerun["stage1_runs"] and len(failed_then_rerun["stage1_runs"]) == 1
    ckpts = sorted((failed_then_rerun["stage1_runs"][0] / "checkpoints").glob("step-*"))
    assert ckpts and ckpts[-1].name.endswith("2")  # still the checkpoint of the last of its 2 steps


OUTPUT_OF = {"ingest-component": "curated", "filter-component": "curated", "split-component": "split",
             "hunyuan-vae-component": "hunyuan_vae", "vae-train-component": "dcae",
             "dit-stage-component": "stage1", "dit-stage-component-2": "stage2", "dit-stage-component-3": "stage3",
             "distill-component": "distilled", "eval-component": "eval_results"}


def _artifact(run, task, name):
    """A task's output artifact: found through the pipeline's outputs, since a task served from KFP's cache
    keeps the folder of the run that produced it."""
    task_dir = run.outputs[OUTPUT_OF[task]].parent
    if task == "ingest-component":  # ingest's folder: the filter's input, named in the filter's executor input
        task_dir = task_dir.parent / "ingest-component"
    out = json.loads((task_dir / "executor_output.json").read_text())
    (art,) = out["artifacts"][name]["artifacts"]
    return Path(art["uri"]), art.get("metadata", {})


def _config(run, task):
    return json.loads((_artifact(run, task, "model")[0] / "config.json").read_text())


def test_every_step_ran_and_curation_counts_chain(run):
    clips, clips_meta = _artifact(run, "ingest-component", "clips")
    curated, curated_meta = _artifact(run, "filter-component", "curated")
    n_clips = len(pd.read_parquet(clips / "clips.parquet"))
    assert clips_meta["num_clips"] == n_clips > 0
    assert curated_meta["input"] == n_clips  # filter scored exactly what ingest wrote
    assert curated_meta["kept_256"] == len(pd.read_parquet(curated / "set_256px.parquet")) > 0
    # rejected clips stay in the full table with their reason
    full = pd.read_parquet(curated / "full.parquet")
    assert len(full) == n_clips and full["rejected_by"].notna().sum() == n_clips - curated_meta["kept_256"]


def test_training_steps_start_from_their_upstream_artifacts(run):
    s1, s2, s3 = (_artifact(run, t, "model")[0] for t in
                  ("dit-stage-component", "dit-stage-component-2", "dit-stage-component-3"))
    vae = _artifact(run, "vae-train-component", "model")[0]
    hy = _artifact(run, "hunyuan-vae-component", "model")[0]
    split, split_meta = _artifact(run, "split-component", "split")
    assert _config(run, "dit-stage-component")["model"]["from_pretrained"] is None
    # stages 1-3 decode with the trained stage-1-3 autoencoder, and every stage trains on the split's tables
    for task in ("dit-stage-component", "dit-stage-component-2", "dit-stage-component-3"):
        assert _config(run, task)["ae"]["path"] == str(hy / "model.safetensors")
    for task in ("hunyuan-vae-component", "vae-train-component", "dit-stage-component", "distill-component"):
        assert _config(run, task)["data"]["table"].startswith(str(split))
        assert _config(run, task)["heldout"]["table"] == str(split / "heldout.parquet")
    held = pd.read_parquet(split / "heldout.parquet")
    train = pd.read_parquet(split / "set_256px.parquet")
    assert split_meta["heldout"] == len(held) > 0 and not set(held.source) & set(train.source)
    assert _config(run, "dit-stage-component-2")["model"]["from_pretrained"] == str(s1 / "model.safetensors")
    assert _config(run, "dit-stage-component-3")["model"]["from_pretrained"] == str(s2 / "model.safetensors")
    distill = _config(run, "distill-component")
    assert distill["model"]["from_pretrained"] == str(s3 / "model.safetensors")
    assert distill["ae"]["kind"] == "dcae" and distill["ae"]["path"] == str(vae / "model.safetensors")
    # stage 3 and distill read the stricter 768px set, the others the 256px set
    assert _config(run, "dit-stage-component-3")["data"]["table"].endswith("set_768px.parquet")
    assert _config(run, "dit-stage-component")["data"]["table"].endswith("set_256px.parquet")
    for task in ("vae-train-component", "hunyuan-vae-component", "dit-stage-component", "distill-component"):
        path, meta = _artifact(run, task, "model")
        assert meta["steps"] == 2 and (path / "MODEL_CARD.md").is_file() and (path / "model.safetensors").is_file()
        # held-out numbers at step 0 and at the end, and the step-0 weights
        steps = [e["step"] for e in json.loads((path / "metrics.json").read_text())["heldout"]]
        assert steps == [0, 2] and (path / "init.safetensors").is_file()


def test_eval_compares_both_models_on_the_same_prompts(run):
    results, _ = _artifact(run, "eval-component", "results")
    doc = json.loads((results / "metrics.json").read_text())
    stage3, distilled = doc["models"]["stage3"], doc["models"]["distilled"]
    n_prompts, n_seeds = doc["run"]["suite"]["n_prompts"], len(doc["run"]["seeds"])
    assert doc["run"]["suite"]["name"] == "heldout_suite" and n_seeds == 2
    # the trained models and the same networks at initialisation, on the same prompts and seeds
    for name in ("stage3", "distilled", "stage3-init", "distilled-init"):
        assert doc["models"][name]["n_videos_ok"] == n_prompts * n_seeds, name
    assert stage3["preset"] == "tiny" and distilled["preset"] == "tiny-hc"
    assert (stage3["num_frames"], distilled["num_frames"]) == (9, 8)  # 4k+1 for the VAE, 4k for the DC-AE
    # no VBench weights here: aggregates are null with the reason, never zero
    assert stage3["vbench"]["aggregates"]["total_score"]["value"] is None
    assert run.report_html.is_file() and "<html" in run.report_html.read_text()[:200].lower()
    # the checks: every threshold with its value (two training steps need not pass them)
    names = {c["check"] for c in run.learning["checks"]}
    assert {"hunyuan_vae.heldout_psnr", "dcae.heldout_psnr_gain", "dit_stage2.handoff", "dit_stage3.handoff",
            "distill.handoff", "stage3.fd_proxy", "distilled.fd_proxy"} <= names
    checks = {c["check"]: c for c in run.learning["checks"]}
    # same clips, autoencoder, timesteps and noise: stage 2 starts exactly where stage 1 ended
    assert checks["dit_stage2.handoff"]["passed"] and checks["dit_stage3.handoff"]["passed"]
    assert checks["distill.handoff"]["passed"]
    # the eval's held-out loss of the stage-3 model is the end of stage 3's own curve
    s3_curve = json.loads((_artifact(run, "dit-stage-component-3", "model")[0] / "metrics.json").read_text())
    assert stage3["train"]["fm_val_loss_mean"] == pytest.approx(s3_curve["heldout"][-1]["fm_loss_mean"], rel=1e-4)


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="needs Debian's chromium: sudo make test-deps")
def test_the_report_where_the_run_says_to_open_it_shows_every_image(run):
    from soraflow.components.eval.browser import report_images

    doc = report_images(run.report_html)
    srcs = [i["src"] for i in doc["images"]]
    assert any(s.startswith("thumbs/grid/") for s in srcs) and any(s.startswith("plots/curve_") for s in srcs)
    assert doc["broken"] == [], doc["broken"]


def test_step_glue_rejects_bad_parameters(tmp_path):
    assert step_overrides("dit_stage1", '{"dit_stage1": {"max_steps": 3}, "ingest": {}}') == {"max_steps": 3}
    with pytest.raises(ValueError, match="unknown step"):
        step_overrides("dit_stage1", '{"dit_stage9": {}}')
    with pytest.raises(ValueError, match="not JSON"):
        step_overrides("dit_stage1", "{max_steps: 3}")
    assert stage_run_dir("/mnt/runs", "job-1", "distill", "/x/model", "abc") == "/mnt/runs/job-1/distill-abc"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    key = stage_key("distill", "r", {"lr": 1}, [str(weights), None])
    assert key == stage_key("distill", "r", {"lr": 1}, [str(weights), None])
    assert key != stage_key("distill", "r", {"lr": 2}, [str(weights), None])
    weights.write_bytes(b"two")  # different input weights: a different run folder, never a wrong resume
    assert key != stage_key("distill", "r", {"lr": 1}, [str(weights), None])
    assert stage_run_dir("", "", "distill", str(tmp_path / "model")) == str(tmp_path / "run" / "local" / "distill")
    assert model_file(None) is None
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        model_file(str(tmp_path))


@pytest.fixture(scope="module")
def retrain(run, tmp_path_factory):
    """The retraining path locally: the first run's curated set versioned and pushed with DVC (what
    `make demo` does), then a run that starts from that revision: data_pull -> split -> training -> eval."""
    import subprocess

    from soraflow.components.data import push, version

    base = tmp_path_factory.mktemp("retrain")
    repo, remote = base / "repo", base / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    pinned = version(repo, run.outputs["curated"], remote=str(remote))
    push(repo)
    out = base / "out"
    return {"pinned": pinned, "run": run_pipeline_locally(str(out), overrides=STEPS, data_revision=pinned["data_revision"],
                                                          dvc_remote=str(remote)), "out": out}


def test_a_run_from_a_data_revision_pulls_it_and_trains_on_it(retrain, run):
    r, pinned = retrain["run"], retrain["pinned"]
    tasks = {p.name for p in r.run_dir.iterdir() if p.is_dir()}
    assert "data-pull-component" in tasks and not tasks & {"ingest-component", "filter-component"}
    assert not (retrain["out"] / "raw").exists()  # no sample videos were generated: nothing was curated
    pulled = r.outputs["curated"]
    out = json.loads((pulled.parent / "executor_output.json").read_text())
    (art,) = out["artifacts"]["curated"]["artifacts"]
    assert art["metadata"]["data_revision"] == pinned["data_revision"]
    # the pulled tables are byte-identical to the versioned ones, and stage 1 trained on their training rows
    for name, digests in pinned["tables"].items():
        assert hashlib.md5((pulled / name).read_bytes()).hexdigest() == digests["md5"], name
    train_rows = pd.read_parquet(r.outputs["split"] / "set_256px.parquet")
    assert len(train_rows) == len(pd.read_parquet(run.outputs["split"] / "set_256px.parquet")) > 0
    cfg = json.loads((r.outputs["stage1"] / "config.json").read_text())
    assert Path(cfg["data"]["table"]).resolve() == (r.outputs["split"] / "set_256px.parquet").resolve()
    assert (r.outputs["distilled"] / "model.safetensors").is_file() and r.report_html.is_file()
