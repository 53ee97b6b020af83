"""Ingest on the generated sample set: cuts, borders, rules, broken files, clip lengths, table, idempotency."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from soraflow.components.ingest import ingest, read_inputs
from soraflow.common.clip_table import REQUIRED_COLUMNS
from soraflow.components.sample_data import load_ground_truth, make_sample_videos
from soraflow.common.video_io import probe_video, read_video_frames
from soraflow.cli.main import main


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    manifest = make_sample_videos(root / "videos", seed=0)
    out = root / "ingest"
    t0 = time.perf_counter()
    result = ingest(manifest, out, workers=2, progress=False)
    return {"manifest": manifest, "truth": load_ground_truth(root / "videos"), "out": out, "result": result,
            "seconds": time.perf_counter() - t0, "root": root}


def _clips_of(sample, name):
    c = sample["result"].clips
    return c[c.source == sample["truth"][name]["path"]].sort_values("start_frame")


def test_sample_set_is_small_and_described(sample):
    truth = sample["truth"]
    assert len(truth) >= 20
    m = pd.read_csv(sample["manifest"])
    assert {"path", "text", "expected", "expected_reason"} <= set(m.columns)
    for name in ("pan_astronaut", "cuts_three_shots", "letterbox_coffee", "vfr_astronaut"):
        info = probe_video(truth[name]["path"])
        assert (info.height, info.width) == (truth[name]["height"], truth[name]["width"])
    assert truth["cuts_three_shots"]["cut_frames"] == [72, 156]
    # a pan at 2 px/frame: frame 10's column 20 is frame 0's column 40
    f, _ = read_video_frames(truth["pan_astronaut"]["path"], [0, 10])
    diff = abs(f[1, :, 20:200].astype(int) - f[0, :, 40:220].astype(int)).mean()
    assert diff < 4, diff


def test_cut_positions_within_two_frames(sample):
    clips = _clips_of(sample, "cuts_three_shots")
    assert len(clips) == 3
    found = [s for s in clips.start_frame if s > 0]
    for cut, got in zip(sample["truth"]["cuts_three_shots"]["cut_frames"], found):
        assert abs(cut - got) <= 2, (cut, got)
    # the clips are exactly the shots
    assert list(clips.num_frames) == pytest.approx(sample["truth"]["cuts_three_shots"]["shot_frames"], abs=2)
    # no false cuts in single-shot clips, shaky and zoom included
    for name in ("pan_astronaut", "zoom_chelsea", "shaky_astronaut", "static_rocket", "vfr_astronaut"):
        assert set(_clips_of(sample, name).shot) == {0}, name


def test_black_borders_cropped_to_known_size(sample):
    t = sample["truth"]["letterbox_coffee"]
    top, bottom, left, right = t["border"]
    (clip,) = _clips_of(sample, "letterbox_coffee").itertuples()
    assert abs(clip.height - (t["height"] - top - bottom)) <= 2
    assert abs(clip.width - (t["width"] - left - right)) <= 2
    w, h, x, y = map(int, clip.crop.split(":"))
    assert abs(x - left) <= 2 and abs(y - top) <= 2
    # nothing black left at the edges of the re-encoded clip
    f, _ = read_video_frames(clip.path, [10])
    assert f[0, :2].mean() > 30 and f[0, -2:].mean() > 30 and f[0, :, :2].mean() > 30 and f[0, :, -2:].mean() > 30
    # clips without borders are not cropped
    assert (_clips_of(sample, "pan_coffee").crop == "").all()


def test_every_bad_file_rejected_with_its_reason(sample):
    rej = sample["result"].rejected.set_index("source")
    for name, t in sample["truth"].items():
        if t["expected"] == "reject":
            assert t["path"] in rej.index, name
            assert rej.loc[t["path"], "reason"] == t["expected_reason"], (name, rej.loc[t["path"], "detail"])
            assert t["path"] in rej.loc[t["path"], "detail"]  # the message names the file
        else:
            assert t["path"] not in rej.index, (name, rej.loc[t["path"], "detail"] if t["path"] in rej.index else "")
            assert len(_clips_of(sample, name)) == t["expected_clips"], name
    assert sample["result"].counts["broken"] == 3


def test_clip_lengths_and_table_types(sample):
    c = sample["result"].clips
    assert tuple(c.columns[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    table = pd.read_parquet(sample["out"] / "clips.parquet")
    assert len(table) == len(c) == 16
    for col in ("num_frames", "height", "width", "resolution"):
        assert pd.api.types.is_integer_dtype(table[col]), col
    for col in ("aspect_ratio", "fps"):
        assert pd.api.types.is_float_dtype(table[col]), col
    assert (table.aspect_ratio == table.height / table.width).all()
    assert (table.resolution == table.height * table.width).all()
    assert (table.fps == table.fps.round(3)).all()
    dur = table.num_frames / table.fps
    assert (dur >= 2.0 - 1.5 / table.fps).all() and (dur <= 8.0 + 1e-6).all(), dur.tolist()
    assert table.text.str.len().gt(0).all()
    for row in table.itertuples():
        info = probe_video(row.path, count_frames=True)
        assert info.codec == "h264" and info.pix_fmt == "yuv420p"
        assert (info.num_frames, info.height, info.width) == (row.num_frames, row.height, row.width)
    assert set(pd.read_parquet(sample["out"] / "rejected.parquet").columns) == {"source", "row", "reason", "detail"}


def test_second_run_does_no_work(sample):
    before = pd.read_parquet(sample["out"] / "clips.parquet")
    clip_files = sorted((sample["out"] / "clips").glob("*.mp4"))
    mtimes = [p.stat().st_mtime_ns for p in clip_files]
    first_lineage = json.loads((sample["out"] / "lineage.json").read_text())
    r = ingest(sample["manifest"], sample["out"], workers=2, progress=False)
    assert r.processed == 0 and r.skipped == len(sample["truth"])
    # no clip was re-encoded: the files are the very ones the first run wrote
    assert sorted((sample["out"] / "clips").glob("*.mp4")) == clip_files
    assert [p.stat().st_mtime_ns for p in clip_files] == mtimes
    # the lineage names what was read and written by digest, and an unchanged input gives the same table hash
    lineage = json.loads((sample["out"] / "lineage.json").read_text())
    table = (sample["out"] / "clips.parquet").read_bytes()
    assert lineage["outputs"]["clips.parquet"]["md5"] == hashlib.md5(table).hexdigest()
    assert lineage["outputs"]["clips.parquet"]["sha256"] == hashlib.sha256(table).hexdigest()
    assert lineage["input"]["manifest"]["md5"] == hashlib.md5(Path(sample["manifest"]).read_bytes()).hexdigest()
    assert lineage["input"]["sources"] == len(sample["truth"])
    assert lineage == first_lineage
    pd.testing.assert_frame_equal(before, pd.read_parquet(sample["out"] / "clips.parquet"))
    pd.testing.assert_frame_equal(sample["result"].rejected, r.rejected)


def test_lost_marker_redoes_only_that_source(sample, tmp_path):
    out = tmp_path / "ing"
    t = sample["truth"]
    srcs = [t["pan_coffee"]["path"], t["too_short"]["path"]]
    first = ingest(srcs, out, workers=1, progress=False)
    assert first.processed == 2 and len(first.clips) == 1
    markers = sorted((out / ".done").glob("*.json"))
    assert len(markers) == 2
    for m in markers:  # "crash" before one source's marker was written
        if json.loads(m.read_text())["status"] == "ok":
            m.unlink()
    again = ingest(srcs, out, workers=1, progress=False)
    assert (again.processed, again.skipped) == (1, 1)
    pd.testing.assert_frame_equal(first.clips, again.clips)
    assert not list(out.rglob(".*.mp4")) and not list(out.glob(".*.parquet"))  # no temp files left


def test_bad_manifests(sample, tmp_path):
    t = sample["truth"]
    no_path = tmp_path / "no_path.csv"
    pd.DataFrame({"file": [t["pan_coffee"]["path"]], "text": ["x"]}).to_csv(no_path, index=False)
    with pytest.raises(ValueError, match=r"no_path\.csv.*'path'"):
        ingest(no_path, tmp_path / "o1", progress=False)
    rows = tmp_path / "rows.jsonl"
    shutil.copy(t["pan_coffee"]["path"], tmp_path / "local.mp4")
    recs = [{"path": "local.mp4", "caption": "relative path"}, {"path": str(tmp_path / "nope.mp4"), "caption": "gone"},
            {"path": "", "caption": "empty"}, {"path": "file://" + t["zoom_chelsea"]["path"], "caption": "via fsspec"}]
    rows.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [r["row"] for r in read_inputs(rows)] == [0, 1, 2, 3]
    r = ingest(rows, tmp_path / "o2", workers=2, progress=False)
    assert sorted(r.clips.text) == ["relative path", "via fsspec"]
    rej = r.rejected.set_index("row")
    assert rej.loc[1, "reason"] == "missing" and "row 1" in rej.loc[1, "detail"] and "nope.mp4" in rej.loc[1, "detail"]
    assert rej.loc[2, "reason"] == "bad_row" and "row 2" in rej.loc[2, "detail"]
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "absent.csv", tmp_path / "o3", progress=False)


def test_cli_sample_data_and_ingest(tmp_path, capsys):
    vids = tmp_path / "v"
    vids.mkdir()
    assert main(["sample-data", "--out-dir", str(tmp_path / "s")]) == 0
    gt = load_ground_truth(tmp_path / "s")
    for name in ("pan_coffee", "low_fps", "zero_bytes"):
        shutil.copy(gt[name]["path"], vids / f"{name}.mp4")
    assert main(["ingest", str(vids), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 0
    table = pd.read_parquet(tmp_path / "o" / "clips.parquet")
    assert len(table) == 1
    assert sorted(pd.read_parquet(tmp_path / "o" / "rejected.parquet").reason) == ["broken", "fps"]
    assert main(["ingest", str(tmp_path / "missing.csv"), "--out-dir", str(tmp_path / "o")]) == 1  # bad input
    assert "missing.csv" in capsys.readouterr().err


# --- the cutting rules on known frame times, and failing fast -------------------------------------------------------

def _cut(times, scores, **kw):
    from soraflow.common.video_io import ScannedFrame
    from soraflow.components.ingest import ClipCutter, IngestParams

    clips = []
    cutter = ClipCutter(IngestParams(**kw), 1 / 24,
                        lambda a, b, t0, t1, shot, frames, ts, boxes: clips.append((a, b, shot, round(t1 - t0, 6))))
    for i, (t, s) in enumerate(zip(times, scores)):
        cutter.add(ScannedFrame(i, t, s, (0, 9, 0, 9), None))
    cutter.finish()
    return clips


def test_clip_cutter_splits_shots_greedily():
    """20 s at 24 fps with a cut at 5 s: the 5 s shot is one clip; the 15 s shot is 8 s + 7 s. An 8.5 s shot
    gives 8 s and a 0.5 s rest that is dropped (< clip_min)."""
    times = [i / 24 for i in range(480)]
    scores = [30.0 if i == 120 else 1.0 for i in range(480)]
    assert _cut(times, scores) == [(0, 120, 0, 5.0), (120, 312, 1, 8.0), (312, 480, 1, 7.0)]
    assert _cut(times[:204], [1.0] * 204) == [(0, 192, 0, 8.0)]
    # a high score on frame 0 is no cut; a shot shorter than clip_min is dropped
    assert _cut(times[:100], [99.0] + [1.0] * 30 + [50.0] + [1.0] * 68) == [(31, 100, 1, 69 / 24)]


def test_constant_rate_resampling():
    from fractions import Fraction

    from soraflow.common.video_io import constant_rate_frames

    t30 = [i / 30 for i in range(60)]
    assert constant_rate_frames(t30, 0.0, 2.0, Fraction(15)) == list(range(0, 60, 2))
    # a 0.2 s gap after frame 2 (10 fps input) at 10 fps out: the frame is repeated, nothing is skipped
    t = [0.0, 0.1, 0.2, 0.4, 0.5]
    assert constant_rate_frames(t, 0.0, 0.6, Fraction(10)) == [0, 1, 2, 2, 3, 4]


def test_every_source_rejected_for_one_reason_stops_with_it(tmp_path):
    from soraflow.components.ingest import IngestError

    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        (src / f"x{k}.mp4").write_text("not a video\n")
    with pytest.raises(IngestError, match=r"every one of the 3 sources was rejected for the same reason 'broken'"):
        ingest(src, tmp_path / "out", progress=False)
    assert len(pd.read_parquet(tmp_path / "out" / "rejected.parquet")) == 3  # the details stay readable
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no videos to ingest"):
        ingest(empty, tmp_path / "out2", progress=False)
    assert main(["ingest", str(empty), "--out-dir", str(tmp_path / "out3")]) == 1


def test_missing_video_backend_is_one_error_at_the_start(sample, tmp_path, monkeypatch):
    """A PyAV build without the scene filter: ingest stops before touching any source, naming what is
    missing, instead of rejecting every video as broken."""
    import av.filter

    from soraflow.common.video_io import VideoBackendError

    monkeypatch.setattr(av.filter, "filters_available", set(av.filter.filters_available) - {"scdet"})
    with pytest.raises(VideoBackendError, match="lacks filter scdet"):
        ingest([sample["truth"]["pan_coffee"]["path"]], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "clips").exists() and not list((tmp_path / "out" / ".done").glob("*"))


def test_manifest_digest_follows_content_not_path(sample, tmp_path):
    """KFP caches ingest on its inputs: the digest input changes when a manifest is rewritten in place, and a
    run whose input changed after submission is refused instead of mixing two versions."""
    from soraflow.components.ingest import IngestError
    from soraflow.components.ingest.ingest import manifest_digest, verify_manifest

    m = tmp_path / "manifest.csv"
    shutil.copy(sample["manifest"], m)
    before = manifest_digest(m)
    assert before == "md5:" + hashlib.md5(m.read_bytes()).hexdigest() == manifest_digest(f"file://{m}")
    verify_manifest(m, before)  # unchanged: fine
    m.write_text(m.read_text().replace("camera pans right", "camera pans left", 1))
    assert manifest_digest(m) != before
    with pytest.raises(IngestError, match="content changed since this run was submitted"):
        verify_manifest(m, before)
    folder = manifest_digest(Path(sample["manifest"]).parent)
    assert folder.startswith("sha256:") and folder == manifest_digest(Path(sample["manifest"]).parent)
