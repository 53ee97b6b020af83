"""Eval step end to end on CPU: tiny and tiny-hc with random weights, same prompts and seeds, held-out clips,
bad input reported per video, the CLI."""

import json
import os

import numpy as np
import pytest

from soraflow.common.video_io import probe_video, write_video
from soraflow.components.eval import EvalModel, kfp_metrics, read_manifest, run_eval
from soraflow.components.sample_data import pan
from soraflow.cli.main import main as cli_main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SORAFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "soraflow-cache"))


def _refs(tmp_path):
    d = tmp_path / "refs"
    d.mkdir()
    write_video(d / "pan.mp4", pan("astronaut", 10, 2, 72, 96), fps=24)
    (d / "broken.mp4").write_text("not a video")
    return d


def test_two_models_side_by_side_with_reports(tmp_path):
    models = [EvalModel("stage3", "tiny", random_init=True),
              EvalModel("hc", "tiny-hc", random_init=True, num_frames=8)]
    r = run_eval(models, str(tmp_path / "ev"), seeds=(3, 4), num_frames=9, height=64, width=64, steps=2,
                 max_prompts=2, reference_clips=str(_refs(tmp_path)))
    rows = read_manifest(r.manifest)
    assert len(rows) == 2 * 2 * 2
    for m in ("stage3", "hc"):
        mine = sorted((x["prompt"], x["index"], x["seed"]) for x in rows if x["model"] == m)
        assert [x[1:] for x in mine] == [(0, 3), (1, 4)] * 2  # same prompts and seeds for both models
    row = rows[0]
    assert os.path.basename(row["path"]) == f"{row['prompt']}-{row['index']}.mp4"
    assert probe_video(row["path"], count_frames=True).num_frames == 9
    doc = json.loads(r.metrics_json.read_text())
    assert doc["schema_version"] == 1 and doc["run"]["seeds"] == [3, 4] and doc["versions"]["torch"]
    for m in ("stage3", "hc"):
        res = doc["models"][m]
        assert res["n_videos_ok"] == 4
        # no VBench weights: every dimension null with its reason, aggregates refused
        assert all(v["raw"] is None and v["reason"].startswith("weights_missing") for v in
                   res["vbench"]["dimensions"].values())
        assert res["vbench"]["aggregates"]["total_score"]["value"] is None
        assert 0 < res["proxy"]["temporal_flickering_all"]["value"] <= 1
        assert res["proxy"]["subject_consistency_ssim"]["kind"] == "proxy"
        assert np.isfinite(res["vae"]["psnr"]) and 0 <= res["vae"]["n_clips"] == 1
        assert set(res["train"]["fm_val_loss"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
        assert res["speed"]["seconds_per_video"] > 0
        assert any("broken.mp4" in e["path"] for e in res["errors"])  # bad clip reported, rest evaluated
    assert doc["models"]["hc"]["ae_kind"] == "dcae" and doc["models"]["stage3"]["ae_kind"] == "hunyuan"
    md, html = r.report_md.read_text(), r.report_html.read_text()
    assert "| proxy.dynamic_degree_dis | proxy |" in md and "<svg" in html and ".gif" in html
    assert (tmp_path / "ev" / "plots" / "proxy_subject_consistency_ssim.svg").exists()
    assert "stage3.speed.seconds_per_video" in kfp_metrics(doc)

    # Re-score the manifest with one file deleted and one corrupted: both reported, the rest still scored.
    os.remove(rows[0]["path"])
    with open(rows[1]["path"], "wb") as fh:
        fh.write(b"garbage")
    rows.append({"model": "stage3", "prompt": "no file", "index": 0})
    man = tmp_path / "manifest.jsonl"
    man.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r2 = run_eval(models, str(tmp_path / "ev2"), seeds=(3, 4), max_prompts=2, samples_manifest=str(man),
                  history=[str(r.metrics_json)])
    doc2 = json.loads(r2.metrics_json.read_text())
    errs = doc2["models"]["stage3"]["errors"]
    assert len(errs) == 3 and any("does not exist" in e["error"] for e in errs)
    assert any("no 'path'" in e["error"] for e in errs)
    assert doc2["models"]["stage3"]["n_videos_ok"] == 2 and doc2["models"]["hc"]["n_videos_ok"] == 4
    assert (tmp_path / "ev2" / "plots" / "trend_subject_consistency_ssim.svg").exists()


def test_cli_eval(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["eval", "--model", "a=tiny", "--model", "b=tiny-hc:frames=8", "--random-init", "--out-dir",
                   str(out), "--max-prompts", "1", "--seeds", "7", "--num-frames", "9", "--height", "64",
                   "--width", "64", "--steps", "1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    doc = json.loads(open(printed["metrics"]).read())
    assert set(doc["models"]) == {"a", "b"} and doc["models"]["b"]["num_frames"] == 8
    assert cli_main(["eval", "--model", "bad", "--out-dir", str(out)]) == 2
