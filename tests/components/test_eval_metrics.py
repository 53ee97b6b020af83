"""Eval step, no models: offline metrics on synthetic videos with known answers, VBench aggregation against
published rows, the VBench adapter with a stand-in VBench, suite loading and VBench file naming."""

import json
import os
import re
import stat
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from soraflow.components.eval import metrics as M
from soraflow.components.eval.suite import load_suite, prompt_from_file_name, video_file_name
from soraflow.components.eval.vbench_runner import DEFAULT_FILES, check_weights, parse_results, run_vbench
from soraflow.components.eval.vbench_scores import DIMENSIONS, PUBLISHED, aggregate, normalize, total_from_groups
from soraflow.components.sample_data import pan

DOC = Path(__file__).resolve().parents[2] / "docs" / "eval.md"  # VBench's constants, tabulated
RNG = np.random.default_rng(0)


def _const(v, t=8, h=32, w=32):
    return np.full((t, h, w, 3), v, np.uint8)


# --- temporal flickering (VBench-exact) ----------------------------------------------------------------------

def _vbench_cal_score(frames):
    """Line-by-line port of VBench's temporal_flickering.cal_score on already-decoded frames."""
    ssds = [np.mean(cv2.absdiff(np.array(a, dtype=np.float32), np.array(b, dtype=np.float32)))
            for a, b in zip(frames[:-1], frames[1:])]
    return (255.0 - np.mean(np.array(ssds)).item()) / 255.0


def test_temporal_flickering_known_answers():
    assert M.temporal_flickering(_const(77)) == 1.0
    alt = np.stack([np.full((16, 16, 3), 255 * (i % 2), np.uint8) for i in range(6)])
    assert M.temporal_flickering(alt) == 0.0
    m = 10
    known = np.stack([np.full((16, 16, 3), 100 + m * (i % 2), np.uint8) for i in range(7)])
    assert M.temporal_flickering(known) == pytest.approx((255 - m) / 255)
    rand = RNG.integers(0, 256, (9, 24, 24, 3), dtype=np.uint8)
    assert M.temporal_flickering(rand) == pytest.approx(_vbench_cal_score(rand), abs=1e-7)


# --- dynamic degree / static filter proxies (DIS flow, VBench rules) ---------------------------------------

@pytest.mark.parametrize("h,w,slow,fast", [(144, 256, 1, 2), (288, 512, 2, 3)])
def test_dynamic_degree_threshold_scales_with_resolution(h, w, slow, fast):
    """fps 24 -> every 3rd frame kept, so a pan of k px/frame moves 3k px per kept pair; VBench's threshold is
    6·min(H,W)/256 = 3.375 px at 144p and 6.75 px at 288p."""
    thres = 6 * min(h, w) / 256
    assert 3 * slow < thres < 3 * fast
    d_slow = M.dynamic_degree_dis(pan("astronaut", 25, slow, h, w), fps=24)
    d_fast = M.dynamic_degree_dis(pan("astronaut", 25, fast, h, w), fps=24)
    assert d_fast["interval"] == 3 and d_fast["count_num"] == round(4 * 9 / 16) and d_fast["thres"] == thres
    assert not d_slow["dynamic"] and d_fast["dynamic"]
    # the measured top-5 % flow is the known displacement (DIS: within 15 %)
    assert np.median(d_fast["scores"]) == pytest.approx(3 * fast, rel=0.15)
    assert not M.dynamic_degree_dis(np.repeat(pan("astronaut", 1, 1, h, w), 25, 0), fps=24)["dynamic"]


def test_static_filter_rule():
    still = np.repeat(pan("coffee", 1, 1), 16, 0)
    assert M.static_filter_dis(still)["static"]
    moving = pan("coffee", 16, 4)
    r = M.static_filter_dis(moving)
    assert not r["static"] and r["count_num"] == 2 and r["thres"] == pytest.approx(3 * 144 / 256)


# --- motion smoothness / consistency proxies ---------------------------------------------------------------

def test_motion_smoothness_linear_ramp_is_one_noise_is_low():
    ramp = np.stack([np.full((16, 16, 3), 10 + 5 * t, np.uint8) for t in range(9)])
    assert M.motion_smoothness_linear(ramp) == 1.0
    noise = RNG.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    assert M.motion_smoothness_linear(noise) < 0.8


def test_consistency_drops_as_frames_are_replaced():
    base = pan("astronaut", 1, 1, 64, 64)[0]
    other = [pan(n, 1, 1, 64, 64)[0] for n in ("coffee", "chelsea", "rocket", "hubble_deep_field", "coins")]
    assert M.subject_consistency_ssim(np.stack([base] * 6)) == pytest.approx(1.0)
    assert M.background_consistency_hist(np.stack([base] * 6)) == pytest.approx(1.0)
    ssim_scores, hist_scores = [], []
    for k in range(0, 6):  # the last k frames replaced by unrelated photographs
        v = np.stack([base] * (6 - k) + other[:k])
        ssim_scores.append(M.subject_consistency_ssim(v))
        hist_scores.append(M.background_consistency_hist(v))
    assert all(a > b for a, b in zip(ssim_scores, ssim_scores[1:])), ssim_scores
    assert all(a > b for a, b in zip(hist_scores, hist_scores[1:])), hist_scores


# --- image statistics and full-reference ---------------------------------------------------------------------

def test_nr_statistics_move_the_right_way():
    clip = pan("astronaut", 4, 2, 96, 96)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in clip])
    noisy = np.clip(clip.astype(float) + RNG.normal(0, 12, clip.shape), 0, 255).astype(np.uint8)
    assert M.imaging_sharpness(blurred) < M.imaging_sharpness(clip)
    assert M.imaging_noise_sigma(noisy) > M.imaging_noise_sigma(clip) > M.imaging_noise_sigma(blurred)
    flat = np.clip(128 + RNG.normal(0, 10, (2, 128, 128, 1)), 0, 255).repeat(3, -1).astype(np.uint8)
    assert M.imaging_noise_sigma(flat) == pytest.approx(10, rel=0.1)  # Immerkaer on pure Gaussian noise


def test_psnr_of_known_noise_and_ssim():
    ref = np.full((3, 16, 16, 3), 128, np.uint8)
    sign = np.where(RNG.random(ref.shape) < 0.5, -1, 1)
    test = (ref.astype(int) + 4 * sign).astype(np.uint8)  # MSE exactly 16
    assert M.psnr(ref, test) == pytest.approx(10 * np.log10(255**2 / 16))
    assert M.psnr(ref, ref) == float("inf")
    assert M.video_ssim(ref, ref) == pytest.approx(1.0)


# --- VBench aggregation --------------------------------------------------------------------------------------

def test_published_totals_follow_4q_plus_s_over_5():
    for name, total, q, s, _ in PUBLISHED:
        # Q, S and Total are each rounded to 0.01: (4Q+S)/5 carries <= 0.005 of rounding, Total another 0.005
        assert total_from_groups(q, s) == pytest.approx(total, abs=0.01), name


def test_aggregate_reproduces_open_sora_2_row_and_refuses_partial_sets():
    """Raw scores built from the constants so every Quality dim normalises to 0.8540 and every Semantic one to
    0.8012; the aggregator must give Open-Sora 2.0's published 85.40 / 80.12 / 84.34."""
    raw = {}
    for d, (lo, hi, w, g) in DIMENSIONS.items():
        raw[d] = lo + (0.8540 if g == "quality" else 0.8012) * (hi - lo)
    agg = aggregate(raw)
    assert 100 * agg["quality_score"]["value"] == pytest.approx(85.40, abs=1e-9)
    assert 100 * agg["semantic_score"]["value"] == pytest.approx(80.12, abs=1e-9)
    assert 100 * agg["total_score"]["value"] == pytest.approx(84.34, abs=0.005)
    assert agg["normalized"]["dynamic_degree"] == pytest.approx(0.5 * 0.8540)  # weight 0.5
    assert normalize("scene", 0.8222) == pytest.approx(1.0) and normalize("motion_smoothness", 0.706) == 0.0
    partial = dict(raw)
    del partial["human_action"]
    p = aggregate(partial)
    assert p["quality_score"]["value"] is not None
    assert p["semantic_score"] == {"value": None, "missing": ["human_action"]}
    assert p["total_score"]["value"] is None and p["total_score"]["missing"] == ["human_action"]
    with pytest.raises(KeyError, match="proxy_thing"):
        aggregate({"proxy_thing": 0.5})


def test_constants_equal_the_documented_table():
    rows = re.findall(r"^\| ([a-z ]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (Quality|Semantic) \|$",
                      DOC.read_text(), re.M)
    assert len(rows) == 16
    for name, lo, hi, w, g in rows:
        assert DIMENSIONS[name.replace(" ", "_")] == (float(lo), float(hi), float(w), g.lower())


# --- suite and naming ----------------------------------------------------------------------------------------

def test_mini_suite_and_file_names(tmp_path):
    s = load_suite("mini")
    assert len(s.prompts) == 22 and s.meta["commit"].startswith("45e79ec1") and "Apache-2.0" in s.meta["license"]
    tags = {d for p in s.prompts for d in p.dimensions}
    assert tags == set(DIMENSIONS)  # every VBench dimension has prompts
    for prompt in ["a cat", "A person is playing ice-2 hockey", "ends in digits-12"]:
        assert prompt_from_file_name(video_file_name(prompt, 3)) == prompt
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt_en": "ok", "dimension": ["scene"]}, {"dimension": ["scene"]}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 1 has no non-empty 'prompt_en'"):
        load_suite(str(bad))


# --- VBench adapter with a stand-in VBench -------------------------------------------------------------------

FAKE_VBENCH = '''
import json, os
class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.full_info, self.out = full_info_dir, output_path
        os.makedirs(output_path, exist_ok=True)
    def evaluate(self, videos_path, name, dimension_list=None, local=False, mode="vbench_standard", **kw):
        with open(os.path.join(self.out, "calls.jsonl"), "a") as fh:
            fh.write(json.dumps({"dims": dimension_list, "local": local, "mode": mode,
                                 "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                         "VBENCH_CACHE_DIR", "TORCH_HOME", "HF_HOME")}}) + "\\n")
        videos = sorted(os.listdir(videos_path))
        scores = json.load(open(os.path.join(os.path.dirname(self.out.rstrip("/")), "scores.json")))
        res = {d: [scores[d], [{"video_path": os.path.join(videos_path, v), "video_results": scores[d]}
                               for v in videos]] for d in dimension_list}
        json.dump(res, open(os.path.join(self.out, name + "_eval_results.json"), "w"))
'''


def _stand_in(tmp_path):
    pkg = tmp_path / "fakevb" / "vbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_VBENCH)
    exe = tmp_path / "vbench-python"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'fakevb'} exec {sys.executable} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        (videos / f"a cat-{i}.mp4").write_bytes(b"")
    return str(exe), videos


def test_vbench_adapter_runs_only_dimensions_with_weights(tmp_path):
    exe, videos = _stand_in(tmp_path)
    root = tmp_path / "weights"
    for f in DEFAULT_FILES["background_consistency"]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"w")
    scores = {d: 0.5 + 0.01 * i for i, d in enumerate(DIMENSIONS)}
    out = tmp_path / "run" / "m"
    out.mkdir(parents=True)
    (tmp_path / "run" / "scores.json").write_text(json.dumps(scores))
    run = run_vbench(str(videos), str(tmp_path / "info.json"), str(out), vbench_python=exe, weights_root=str(root),
                     device="cpu")
    # temporal_flickering needs no weights; CLIP ViT-B/32 serves background_consistency and appearance_style;
    # nothing else may be requested
    expect = ["appearance_style", "background_consistency", "temporal_flickering"]
    assert sorted(run.scores) == expect, run.errors
    assert run.scores["background_consistency"]["raw"] == scores["background_consistency"]
    assert run.scores["background_consistency"]["n_videos"] == 2
    assert run.skipped["subject_consistency"].startswith("weights_missing: ")
    assert "dino_vitbase16_pretrain.pth" in run.skipped["subject_consistency"]
    calls = [json.loads(l) for l in (out / "calls.jsonl").read_text().splitlines()]
    assert sorted(c["dims"][0] for c in calls) == expect
    for c in calls:
        assert c["local"] is True and c["env"]["HF_HUB_OFFLINE"] == "1" and c["env"]["TRANSFORMERS_OFFLINE"] == "1"
        assert c["env"]["VBENCH_CACHE_DIR"] == str(root.resolve())
    assert aggregate({d: v["raw"] for d, v in run.scores.items()})["total_score"]["value"] is None


def test_vbench_adapter_full_set_aggregates_and_custom_mode_skips_aux_dims(tmp_path):
    exe, videos = _stand_in(tmp_path)
    root = tmp_path / "weights"
    for files in DEFAULT_FILES.values():
        for f in files:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_bytes(b"w")
    scores = {d: lo + 0.7 * (hi - lo) for d, (lo, hi, _, _) in DIMENSIONS.items()}
    out = tmp_path / "run" / "m"
    out.mkdir(parents=True)
    (tmp_path / "run" / "scores.json").write_text(json.dumps(scores))
    run = run_vbench(str(videos), "x.json", str(out), vbench_python=exe, weights_root=str(root), device="cpu")
    assert sorted(run.scores) == sorted(DIMENSIONS)
    agg = aggregate({d: v["raw"] for d, v in run.scores.items()})
    assert agg["total_score"]["value"] == pytest.approx(0.7)
    custom = check_weights(str(root), mode="custom_input")
    assert "color" in custom.skipped and "custom_input" in custom.skipped["color"]
    assert check_weights(None).skipped["scene"].startswith("weights_missing")


def test_parse_results_names_file_and_field(tmp_path):
    p = tmp_path / "r_eval_results.json"
    p.write_text(json.dumps({"scene": ["high", []]}))
    with pytest.raises(ValueError, match=r"r_eval_results.json: field 'scene'"):
        parse_results(p)
    p.write_text(json.dumps({"scene": [0.4, [{"video_path": "a-0.mp4", "video_results": 0.4}]]}))
    assert parse_results(p)["scene"]["raw"] == 0.4
