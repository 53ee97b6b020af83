"""Filter step: scorers on generated clips, the 256px/768px pyramid, validation, DVC round trip."""

from __future__ import annotations

import dataclasses

import hashlib
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from soraflow.components.filter import (  # noqa: E402
    AestheticScorer,
    Clip,
    FilterThresholds,
    MotionScorer,
    OCRScorer,
    ValidationError,
    run_filter,
    validate_table,
)
from soraflow.common.clip_table import read_table  # noqa: E402
from soraflow.common.video_io import write_video  # noqa: E402

S, T, FPS = 64, 16, 24.0


def _panorama(seed: int, size: int = S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pano = cv2.GaussianBlur(rng.integers(0, 256, (size, size + 8 * T + 64, 3)).astype(np.float32), (0, 0), 1.2)
    return np.clip((pano - pano.mean()) * 3 + 128, 0, 255).astype(np.uint8)


def _pan(pano: np.ndarray, speed: int) -> np.ndarray:
    s = pano.shape[0]
    return np.stack([pano[:, 32 + speed * i: 32 + speed * i + s] for i in range(T)])


def _row(path: Path, text: str, fps: float = FPS) -> dict:
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        h, w, n = st.codec_context.height, st.codec_context.width, st.frames or T
    return {"path": str(path), "text": text, "num_frames": int(n), "height": h, "width": w,
            "aspect_ratio": h / w, "resolution": h * w, "fps": fps, "source": "synthetic"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    same = _panorama(0)
    paths = {}
    for v in (0, 1, 2, 4, 8):  # same texture, known speeds (px/frame)
        paths[f"speed{v}"] = write_video(d / f"speed{v}.mp4", _pan(same, v), FPS)
    paths["good_a"] = write_video(d / "good_a.mp4", _pan(_panorama(1), 2), FPS)
    paths["good_b"] = write_video(d / "good_b.mp4", _pan(_panorama(2), 3), 30.0)
    paths["good_big"] = write_video(d / "good_big.mp4", _pan(_panorama(3, 96), 2), FPS)
    paths["static"] = write_video(d / "static.mp4", _pan(_panorama(4), 0), FPS)
    paths["blurred"] = write_video(d / "blurred.mp4",
                                   np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in _pan(_panorama(5), 2)]), FPS)
    rng = np.random.default_rng(6)
    pano6, sx = _panorama(6), rng.integers(-12, 13, T)
    paths["jittery"] = write_video(d / "jittery.mp4", np.stack([pano6[:, 64 + x: 64 + x + S] for x in sx]), FPS)
    paths["dup"] = write_video(d / "dup.mp4", _pan(_panorama(1), 2), FPS, crf=28)  # re-encode of good_a
    paths["uncaptioned"] = write_video(d / "uncaptioned.mp4", _pan(_panorama(7), 1), FPS)
    bad = d / "broken.mp4"
    bad.write_bytes(np.random.default_rng(8).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    paths["broken"] = bad
    return paths


@pytest.fixture(scope="module")
def table(clips):
    rows = [_row(clips[k], f"a clip named {k}") for k in
            ("good_a", "good_b", "good_big", "static", "blurred", "jittery", "dup")]
    rows[1]["fps"] = 30.0
    rows.append(_row(clips["uncaptioned"], ""))
    rows.append({"path": str(clips["broken"]), "text": "broken", "num_frames": 16, "height": 64, "width": 64,
                 "aspect_ratio": 1.0, "resolution": 4096, "fps": FPS, "source": "synthetic"})
    return pd.DataFrame(rows)


T256 = FilterThresholds()
T768 = FilterThresholds(motion_min=0.5, motion_max=30.0, blur_min=40.0, jitter_max=3.0, min_short_side=80)


@pytest.fixture(scope="module")
def result(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "curated"
    return run_filter(table, out, thresholds_256=T256, thresholds_768=T768, num_workers=2, progress=False)


def _by_name(df: pd.DataFrame, name: str) -> pd.Series:
    return df[df["path"].str.endswith(f"/{name}.mp4")].iloc[0]


def test_motion_score_orders_known_pan_speeds(clips):
    scorer = MotionScorer()
    scores = [scorer(Clip(str(clips[f"speed{v}"]))).values["score_vmafmotion"] for v in (0, 1, 2, 4, 8)]
    assert scores[0] < 0.1, scores
    assert all(b > a for a, b in zip(scores, scores[1:])), scores


def _vmafmotion_filter(path) -> list[float]:
    """Per-frame scores of FFmpeg's own `vmafmotion` filter, run on the decoded frames through PyAV's filter
    graph (the filter prints each score to two decimals in the frame's metadata)."""
    import av
    import av.filter

    scores = []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        g = av.filter.Graph()
        src, vm, sink = g.add_buffer(template=st), g.add("vmafmotion"), g.add("buffersink")
        src.link_to(vm)
        vm.link_to(sink)
        g.configure()
        for frame in list(c.decode(st)) + [None]:
            g.vpush(frame)
            while True:
                try:
                    scores.append(float(g.vpull().metadata["lavfi.vmafmotion.score"]))
                except (av.error.BlockingIOError, av.error.EOFError):
                    break
    return scores


def test_motion_matches_ffmpeg_vmafmotion(clips):
    """The luma engine against FFmpeg's vmafmotion filter: per frame within the filter's printed precision
    (%.2f, so 0.005), and the scorer's clip value is the mean of those per-frame scores."""
    from soraflow.common.video_io import iter_luma_frames
    from soraflow.components.filter.motion import VmafMotion

    for name in ("speed1", "speed8", "good_b", "jittery", "blurred"):
        per_frame = _vmafmotion_filter(clips[name])
        acc = VmafMotion()
        for fr in iter_luma_frames(clips[name]):
            acc.update(fr.luma, fr.bit_depth)
        assert len(acc.scores) == len(per_frame) == T
        assert np.max(np.abs(np.array(acc.scores) - per_frame)) <= 0.005 + 1e-9, name
        assert max(per_frame) > 0.5 or name == "speed0"  # a real signal, not zeros on both sides
        value = MotionScorer()(Clip(str(clips[name]))).values["score_vmafmotion"]
        assert value == pytest.approx(np.mean(acc.scores)) and abs(value - np.mean(per_frame)) <= 0.005 + 1e-9


def test_rejections_have_stage_and_reason(result):
    full = result.full
    expect = {"blurred": "blur", "jittery": "jitter", "static": "motion", "broken": "decode", "dup": "dedup"}
    for name, stage in expect.items():
        row = _by_name(full, name)
        assert row["rejected_by"] == stage, (name, row["rejected_by"], row["reason"])
        assert row["reason"]
    assert "broken.mp4" in _by_name(full, "broken")["reason"]
    assert _by_name(full, "dup")["dup_of"].endswith("/good_a.mp4")
    for name in ("good_a", "good_b", "good_big", "uncaptioned"):
        assert pd.isna(_by_name(full, name)["rejected_by"]), _by_name(full, name)["reason"]
    counts = result.counts["rejected_256"]
    assert counts == {"decode": 1, "blur": 1, "motion": 1, "jitter": 1, "dedup": 1}
    assert result.counts["input"] == 9 and result.counts["needs_caption"] == 1


def test_pluggable_scorers_record_not_run(result, clips):
    full = result.full
    assert set(full.loc[full["status_decode"] == "ok", "status_aesthetic"]) == {"not_run"}
    assert full["score_aesthetic"].isna().all() and full["score_ocr"].isna().all()
    assert "weights" in _by_name(full, "good_a")["note_ocr"]
    # with a (fake) local model the same stage records a real score
    weights = Path(clips["good_a"]).parent
    aes = AestheticScorer(weights_path=str(weights), model_factory=lambda p: (lambda fr: np.full(len(fr), 5.25)))
    assert aes(Clip(str(clips["good_a"]))).values == {"score_aesthetic": 5.25}
    ocr = OCRScorer(weights_path=str(weights), detector_factory=lambda p: (lambda f: [((0, 0, 32, 32), 0.9),
                                                                                    ((0, 0, 64, 64), 0.5)]))
    assert ocr(Clip(str(clips["good_a"]))).values["score_ocr"] == pytest.approx(0.25)


def test_pyramid_and_files(result):
    out = result.out_dir
    for name in ("full.parquet", "set_256px.parquet", "set_768px.parquet", "needs_caption.parquet", "stats.json"):
        assert (out / name).exists(), name
    s256, s768 = read_table(out / "set_256px.parquet"), read_table(out / "set_768px.parquet")
    assert set(s768["path"]) <= set(s256["path"])
    assert len(s768) < len(s256)
    assert [Path(p).name for p in s768["path"]] == ["good_big.mp4"]
    assert len(read_table(out / "full.parquet")) == 9
    assert [Path(p).name for p in read_table(out / "needs_caption.parquet")["path"]] == ["uncaptioned.mp4"]
    assert not list(out.parent.glob(".curated.*")), "temporary folders left behind"


def test_captions_get_fps_and_motion_suffix_once(result):
    # The set stores the raw caption next to fps / score_vmafmotion; the training dataset appends the suffix.
    from soraflow.training.data import VideoTextDataset

    s = result.set_256.set_index(result.set_256["path"].map(lambda p: Path(p).name))
    a = s.loc["good_a.mp4"]
    assert a["text"] == a["caption"] == "a clip named good_a"
    ds = VideoTextDataset(result.out_dir / "set_256px.parquet")
    texts = dict(zip(ds.table["path"].map(lambda p: Path(p).name), (ds._caption(i) for i in range(len(ds)))))
    assert texts["good_a.mp4"] == f"a clip named good_a 24 FPS, {int(a['score_vmafmotion'] + 0.5)} motion score."
    b = s.loc["good_b.mp4"]  # 30 fps source -> 15 fps after subsampling (map_target_fps)
    assert texts["good_b.mp4"] == f"a clip named good_b 15 FPS, {int(b['score_vmafmotion'] + 0.5)} motion score."
    assert all(t.count("FPS") == 1 for t in texts.values())


def test_output_passes_validation(result):
    assert result.validation["set_256px"]["success"] and result.validation["set_768px"]["success"]
    rep = validate_table(result.set_256, "set_256px")
    assert rep["success"] and rep["engine"].startswith(("great_expectations", "pandas"))


def test_corrupted_table_fails_with_readable_report(result, tmp_path):
    bad = result.set_256.copy()
    bad.loc[0, "fps"] = -5.0
    bad = pd.concat([bad, bad.iloc[[1]]], ignore_index=True).drop(columns=["num_frames"])
    with pytest.raises(ValidationError) as info:
        validate_table(bad, "corrupt")
    msg = str(info.value)
    assert "expect_column_to_exist" in msg and "num_frames" in msg
    assert "expect_column_values_to_be_between" in msg and "rows [0]" in msg and "-5.0" in msg
    assert "expect_column_values_to_be_unique" in msg
    failed = {e["expectation"] for e in info.value.report["expectations"] if not e["success"]}
    assert {"expect_column_to_exist", "expect_column_values_to_be_between",
            "expect_column_values_to_be_unique"} <= failed


def test_failed_validation_keeps_previous_dataset(result, table, tmp_path):
    out = tmp_path / "curated"
    good = table[table["path"].str.endswith(("good_a.mp4", "good_b.mp4"))]
    run_filter(good, out, thresholds_256=T256, thresholds_768=T768, progress=False)
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")}
    corrupt = good.copy()
    corrupt["fps"] = [-1.0, 24.0]
    with pytest.raises(ValidationError) as info:
        run_filter(corrupt, out, thresholds_256=T256, thresholds_768=T768, progress=False)
    assert "fps" in str(info.value)
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")}
    assert after == before
    reports = tmp_path / "curated.reports"
    assert (reports / "set_256px.json").exists() and (reports / "set_256px.md").exists()
    assert "expect_column_values_to_be_between" in (reports / "set_256px.md").read_text()
    assert not list(tmp_path.glob(".curated.*"))




@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_round_trip(result, tmp_path):
    from soraflow.common.digests import file_md5
    from soraflow.common.dvc import status, track
    from soraflow.components.filter.versioning import version_dataset

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    data = repo / "data" / "curated"
    shutil.copytree(result.out_dir, data)
    table_path = result.out_dir / "full.parquet"
    v1 = version_dataset(repo, data, input_path=table_path, remote=tmp_path / "remote")
    assert v1["status"] == {}, v1["status"]
    assert v1["output"]["md5"].endswith(".dir")
    assert v1["input_md5"] == file_md5(table_path)
    assert (repo / "data" / "curated.dvc").exists()
    v2 = track(repo, data)  # same bytes -> same md5
    assert v2.md5 == v1["output"]["md5"]
    assert status(repo) == {}


def test_cli_filter(table, tmp_path, capsys):
    import json

    from soraflow.cli.main import main

    src = tmp_path / "clips.csv"
    table[table["path"].str.endswith(("good_a.mp4", "blurred.mp4"))].to_csv(src, index=False)
    out = tmp_path / "cli-out"
    rc = main(["filter", "--table", str(src), "--out-dir", str(out), "--no-progress", "--set-256", "blur_min=10"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["kept_256"] == 1 and summary["counts"]["rejected_256"] == {"blur": 1}
    assert (out / "set_256px.parquet").exists()
    assert main(["filter", "--table", str(src), "--out-dir", str(out), "--set-256", "nope=1"]) == 2


def test_every_clip_rejected_by_one_stage_stops_with_it(table, tmp_path):
    from soraflow.components.filter import FilterError

    broken = table[table["text"] == "broken"]
    bad = pd.concat([broken, broken.assign(path=str(tmp_path / "gone.mp4"))], ignore_index=True)
    with pytest.raises(FilterError, match=r"every one of the 2 clips was rejected by the 'decode' stage"):
        run_filter(bad, tmp_path / "curated", progress=False)
    assert not (tmp_path / "curated").exists()  # nothing written


def _scored_row(height: int, width: int) -> pd.Series:
    """A clip whose quality scores pass both levels' default thresholds: only its size decides."""
    row = {"status_decode": "ok", "height": height, "width": width, "decoded_frames": 16,
           "score_blur": 100.0, "score_vmafmotion": 5.0, "score_jitter": 0.5, "score_aesthetic": 6.0,
           "score_ocr": 0.0}
    row.update({f"status_{s}": "ok" for s in ("blur", "motion", "jitter", "aesthetic", "ocr")})
    return pd.Series(row)


def test_the_768px_level_needs_a_clip_as_large_as_its_smallest_bucket():
    from soraflow.components.filter.filter import THRESHOLDS_256, THRESHOLDS_768, _check

    # the smallest 768px bucket is 16:9 576x1024: a 480p clip would be upscaled, so it stays 256px-only
    assert _check(_scored_row(480, 854), THRESHOLDS_256) == (None, "")
    assert _check(_scored_row(480, 854), THRESHOLDS_768) == ("size", "short side 480px < 576px")
    assert _check(_scored_row(1024, 576), THRESHOLDS_768) == (None, "")  # portrait: the short side counts
    assert _check(_scored_row(576, 1024), THRESHOLDS_768) == (None, "")


def test_thresholds_from_a_mapping_change_only_what_they_name():
    from soraflow.components.filter import THRESHOLDS_768, as_thresholds

    t = as_thresholds({"min_short_side": 144, "aesthetic_min": None}, THRESHOLDS_768, "thresholds_768")
    assert (t.min_short_side, t.aesthetic_min) == (144, None)
    assert dataclasses.replace(t, min_short_side=576, aesthetic_min=5.0) == THRESHOLDS_768
    with pytest.raises(ValueError, match=r"thresholds_768: unknown threshold 'blur' \(did you mean blur_min\?\)"):
        as_thresholds({"blur": 3}, THRESHOLDS_768, "thresholds_768")
    with pytest.raises(ValueError, match=r"thresholds_768.motion_min: expected a number or null, got '1'"):
        as_thresholds({"motion_min": "1"}, THRESHOLDS_768, "thresholds_768")
