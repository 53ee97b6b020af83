"""Multi-bucket training data: AR table, bucket rules, sampler, dataset, loader (docs/models.md#buckets,
#loading-and-transforms, #motion-score-and-fps-in-captions, docs/architecture.md#data-loading)."""

import logging
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from soraflow.models.aspect import training_aspect_ratios
from soraflow.training.data import (BucketConfig, VariableVideoBatchSampler, VideoTextDataset, build_dataloader,
                           collate_skip, data_revision, make_caption, parse_index, resize_crop)
from soraflow.training.data.fixtures import decode_frame_index, make_video_table

NAN = float("nan")


def _table(rows):
    """rows: (num_frames, height, width, fps) -> a metadata-only clip table (no files needed by the sampler)."""
    return pd.DataFrame([{"path": f"/nonexistent/{i}.mp4", "text": f"clip {i}", "num_frames": n, "height": h,
                          "width": w, "aspect_ratio": h / w, "resolution": h * w, "fps": f}
                         for i, (n, h, w, f) in enumerate(rows)])


# ---------------------------------------------------------------------------------------------------------- AR table
def test_training_aspect_table_matches_spec_values():
    t256 = training_aspect_ratios("256px")
    assert t256["16:9"] == (192, 336) and t256["1:1"] == (256, 256) and t256["4:3"] == (224, 288)
    assert t256["3:2"] == (208, 320) and t256["2:1"] == (176, 368) and t256["2.39:1"] == (160, 400)
    assert t256["9:16"] == (336, 192)  # vertical counterpart = transposed size
    t768 = training_aspect_ratios("768px")
    assert t768["4:3"] == (672, 880) and t768["16:9"] == (576, 1024) and t768["1:1"] == (768, 768)
    assert t768["9:16"] == (1024, 576) and t768["2.39:1"] == (496, 1184)
    for table, d in ((t256, 16), (t768, 16), (training_aspect_ratios("256px", 32), 32)):
        sizes = list(table.values())
        assert all(h % d == 0 and w % d == 0 for h, w in sizes)
    # a listed ratio repeating an earlier size is skipped, but transposed entries may repeat one (as released)
    t256_32 = training_aspect_ratios("256px", 32)
    assert "1.85:1" not in t256_32 and t256_32["16:9"] == t256_32["2:1"] == (192, 352)
    assert t256_32["1:2"] == t256_32["9:16"] == (352, 192)
    assert training_aspect_ratios("256px_ar1:1") == {"1:1": (256, 256)}
    assert len(training_aspect_ratios("768px_max")) == 1
    with pytest.raises(ValueError):
        training_aspect_ratios("256pix")


# ------------------------------------------------------------------------------------------------ bucket assignment
CONFIG_ALL = {
    "256px": {1: (1.0, 4), 5: (1.0, 3), 17: (1.0, 2), 33: (1.0, 2)},
    "768px": {1: (1.0, 2), 33: (1.0, 1)},
}
# (num_frames, H, W, fps) -> expected (res, T, (H, W)) by hand from docs/models.md#buckets,
# #motion-score-and-fps-in-captions, or None (dropped)
HAND = [
    ((1, 720, 1280, NAN), ("768px", 1, (576, 1024))),   # image, 921600 px >= 0.8·768², 16:9
    ((100, 720, 1280, 30), ("768px", 33, (576, 1024))),  # 30 fps -> interval 2, T_eff 50 >= 33
    ((60, 720, 1280, 60), ("256px", 17, (192, 336))),   # 60 fps -> interval 3, T_eff 20: no 768px length -> 256px
    ((40, 256, 256, 24), ("256px", 33, (256, 256))),    # 24 fps -> interval 1
    ((50, 256, 256, 23.976), ("256px", 33, (256, 256))),  # < 24 fps: interval 1
    ((33, 240, 240, 24), ("256px", 33, (256, 256))),    # 57600 >= 0.8·65536 = 52428.8
    ((33, 200, 200, 24), None),                         # 40000 < 52428.8: too small for any resolution
    ((4, 480, 640, 24), None),                          # T_eff 4 < smallest video bucket 5
    ((33, 480, 640, 25), ("256px", 5, (224, 288))),     # 25 fps -> interval 2, T_eff 16 -> 5; 4:3
    ((34, 480, 640, 25), ("256px", 17, (224, 288))),    # T_eff 17 -> 17
    ((1, 300, 500, NAN), ("256px", 1, (192, 336))),     # h/w 0.6: 16:9 (0.5625) closer than 3:2 (0.667)
    ((9, 100, 1000, 24), ("256px", 5, (160, 400))),     # h/w 0.1 -> 2.39:1
    ((17, 640, 360, 24), ("256px", 17, (336, 192))),    # vertical -> 9:16
    ((129, 1080, 1920, 24), ("768px", 33, (576, 1024))),
]


def test_every_sample_lands_in_the_hand_computed_bucket():
    table = _table([r for r, _ in HAND])
    a = BucketConfig(CONFIG_ALL).assign(table.num_frames, table.height, table.width, table.fps, seed=3, epoch=0)
    for row, (spec, want) in enumerate(HAND):
        b = a.bucket_of(row)
        got = None if b is None else (b.resolution, b.num_frames, (b.height, b.width))
        assert got == want, f"row {row} {spec}: got {got}, want {want}"
    # and the sampler hands exactly those shapes to the dataset
    s = VariableVideoBatchSampler(table, CONFIG_ALL, seed=3)
    seen = {}
    for batch in s:
        for ix in batch:
            idx, t, h, w = parse_index(ix)
            seen[idx] = (t, (h, w))
    assert seen == {i: (w[1], w[2]) for i, (_, w) in enumerate(HAND) if w is not None}


def test_fall_through_to_smaller_resolution_when_keep_fails():
    cfg = {"768px": {1: (0.0, 2), 33: (0.0, 1)}, "256px": {1: (1.0, 2), 33: (1.0, 1)}}
    table = _table([(1, 720, 1280, NAN), (40, 720, 1280, 24)])
    a = BucketConfig(cfg).assign(table.num_frames, table.height, table.width, table.fps)
    assert a.bucket_of(0).thw == (1, 192, 336) and a.bucket_of(1).thw == (33, 192, 336)
    # batch size None switches a bucket off
    cfg = {"256px": {1: (1.0, None), 33: (1.0, 1)}}
    a = BucketConfig(cfg).assign(table.num_frames, table.height, table.width, table.fps)
    assert a.bucket_of(0) is None and a.bucket_of(1).thw == (33, 192, 336)


def test_keep_and_skip_probabilities_hold_over_many_draws():
    n = 4000
    cfg = {"768px": {1: (0.5, 1)}, "256px": {1: (0.3, 1), 33: ((0.5, 0.4), 1), 17: (1.0, 1)}}
    bc = BucketConfig(cfg)
    big_img = bc.assign([1] * n, [768] * n, [768] * n, [NAN] * n, seed=0, epoch=0)
    small_img = bc.assign([1] * n, [256] * n, [256] * n, [NAN] * n, seed=0, epoch=0)
    vid = bc.assign([40] * n, [256] * n, [256] * n, [24.0] * n, seed=0, epoch=0)
    tol = 0.03  # > 3.7 standard deviations of a proportion over 4000 draws
    res = lambda a: np.array([bc.resolutions[i] if i >= 0 else None for i in a.res_idx], dtype=object)
    # big images: 0.5 in 768px; the rest fall to 256px and are kept there with 0.3
    assert abs(np.mean(res(big_img) == "768px") - 0.5) < tol
    assert abs(np.mean(res(big_img) == "256px") - 0.5 * 0.3) < tol
    assert abs(np.mean(res(small_img) == "256px") - 0.3) < tol
    # videos: 33 chosen unless skipped (0.4), then kept with 0.5 -> 0.3; skipped -> 17 kept always -> 0.4
    t = vid.num_frames[vid.res_idx >= 0]
    assert abs(np.mean(vid.num_frames == 33) - 0.6 * 0.5) < tol
    assert abs(len(t[t == 17]) / n - 0.4) < tol
    assert abs(np.mean(vid.res_idx < 0) - 0.3) < tol
    # deterministic in (seed, epoch, row): same draws again, a row's draws do not depend on the table size
    again = bc.assign([40] * 100, [256] * 100, [256] * 100, [24.0] * 100, seed=0, epoch=0)
    assert np.array_equal(again.num_frames, vid.num_frames[:100])
    other = bc.assign([40] * n, [256] * n, [256] * n, [24.0] * n, seed=0, epoch=1)
    assert not np.array_equal(other.num_frames, vid.num_frames)


# ---------------------------------------------------------------------------------------------------------- sampler
def _mixed_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(256, 256), (720, 1280), (480, 640), (1280, 720)]
    rows = []
    for i in range(n):
        h, w = shapes[rng.integers(len(shapes))]
        rows.append((1, h, w, NAN) if rng.random() < 0.3 else (int(rng.integers(5, 80)), h, w, [24, 30, 60][i % 3]))
    return _table(rows)


SAMPLER_CFG = {"256px": {1: (1.0, 4), 5: (1.0, 3), 17: (0.8, 2), 33: (1.0, 2)}}


def _run(sampler):
    return [list(b) for b in sampler]


def test_ranks_disjoint_cover_kept_rows_and_take_equal_steps():
    table = _mixed_table()
    ws = 3
    kept = set(np.nonzero(VariableVideoBatchSampler(table, SAMPLER_CFG, seed=7).assignment().res_idx >= 0)[0].tolist())
    assert len(kept) > 30
    # drop_last=False: together the ranks cover every kept row; equal step counts
    runs = [_run(VariableVideoBatchSampler(table, SAMPLER_CFG, rank=r, world_size=ws, seed=7)) for r in range(ws)]
    assert len({len(r) for r in runs}) == 1 and len(runs[0]) == len(
        VariableVideoBatchSampler(table, SAMPLER_CFG, world_size=ws, seed=7))
    assert {parse_index(ix)[0] for run in runs for b in run for ix in b} == kept
    # drop_last=True: no sample is seen twice in the epoch, across all ranks
    runs = [_run(VariableVideoBatchSampler(table, SAMPLER_CFG, rank=r, world_size=ws, seed=7, drop_last=True))
            for r in range(ws)]
    assert len({len(r) for r in runs}) == 1
    ids = [parse_index(ix)[0] for run in runs for b in run for ix in b]
    assert len(ids) == len(set(ids)) and set(ids) <= kept
    # each micro-batch: one bucket shape, the bucket's batch size; ranks differ in shape in some step
    bc = BucketConfig(SAMPLER_CFG)
    for run in runs:
        for b in run:
            shapes = {parse_index(ix)[1:] for ix in b}
            assert len(shapes) == 1
            assert len(b) == bc.batch_sizes["256px", next(iter(shapes))[0]]
    assert any(len({parse_index(r[s][0])[1:] for r in runs}) > 1 for s in range(len(runs[0])))


def test_state_round_trip_gives_the_uninterrupted_sequence():
    table = _mixed_table(seed=1)
    mk = lambda r=0, ws=2: VariableVideoBatchSampler(table, SAMPLER_CFG, rank=r, world_size=ws, seed=5)
    full = mk()
    full.set_epoch(1)
    ref = _run(full)
    assert len(ref) == len(full) > 4
    a = mk()
    a.set_epoch(1)
    it = iter(a)
    head = [next(it) for _ in range(3)]
    state = a.state_dict()
    assert state["epoch"] == 1 and state["consumed_micro_batches"] == 3 * 2
    b = mk()
    b.load_state_dict(state)
    b.set_epoch(1)  # same epoch: keeps the position
    assert head + _run(b) == ref
    b.set_epoch(2)
    assert b.state_dict()["consumed_micro_batches"] == 0 and _run(b) != ref
    # other rank, and a different world size continuing from the same global position
    plan = mk().micro_batches(1)
    c = VariableVideoBatchSampler(table, SAMPLER_CFG, rank=0, world_size=1, seed=5)
    c.load_state_dict(state)
    assert [parse_index(x)[0] for x in next(iter(c))] == plan[6][1]
    with pytest.raises(ValueError):
        VariableVideoBatchSampler(table, SAMPLER_CFG, seed=6).load_state_dict(state)


def test_data_revision_tracks_table_and_config(tmp_path):
    table = _mixed_table()
    r0 = data_revision(table, SAMPLER_CFG)
    assert r0 == data_revision(table.copy(), {k: dict(v) for k, v in SAMPLER_CFG.items()})
    assert r0 != data_revision(table, {"256px": {1: (1.0, 5)}})
    assert r0 != data_revision(table.iloc[:-1], SAMPLER_CFG)
    p = tmp_path / "t.csv"
    table.to_csv(p, index=False)
    rp = data_revision(p, SAMPLER_CFG)
    p.write_text(p.read_text().replace("clip 3", "clip three"))
    assert data_revision(p, SAMPLER_CFG) != rp


# ---------------------------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    specs = [
        dict(name="v60", num_frames=40, fps=60, height=96, width=128, motion=3.4),
        dict(name="v24", num_frames=12, fps=24, height=96, width=128, motion=5.6),
        dict(name="v30", num_frames=20, fps=30, height=96, width=128),
        dict(name="img", kind="image", height=80, width=120),
    ]
    return make_video_table(d, specs)


def _decoded_ids(video):
    x = (video + 1) * 127.5  # [3, T, H, W]
    return [decode_frame_index(x[:, k].mean(dim=(1, 2))) for k in range(x.shape[1])]


def test_temporal_window_follows_the_fps_rule_and_is_reproducible(clips):
    ds = VideoTextDataset(clips, seed=1)
    it = ds["0-8-64-96"]  # 60 fps -> interval 3: window 24 of 40 frames
    start = it["frame_indices"][0]
    want = np.linspace(start, start + 8 * 3 - 1, 8).astype(int).tolist()
    assert it["frame_indices"] == want and 0 <= start <= 40 - 24
    assert _decoded_ids(it["video"]) == want  # the pixels are those source frames
    assert it["fps"] == 20
    assert torch.equal(ds["0-8-64-96"]["video"], it["video"])  # reproducible for (seed, epoch, idx)
    starts = set()
    for e in range(6):
        ds.set_epoch(e)
        starts.add(ds["0-8-64-96"]["frame_indices"][0])
    assert len(starts) > 1  # the start is random across epochs
    it = ds["1-12-64-96"]  # 24 fps -> interval 1, whole clip
    assert it["frame_indices"] == list(range(12)) and _decoded_ids(it["video"]) == list(range(12))
    it = ds["2-10-64-96"]  # 30 fps -> interval 2: the window is the whole 20 frames, linspace(0, 19, 10)
    assert it["frame_indices"] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 19] and it["fps"] == 15
    assert _decoded_ids(it["video"]) == it["frame_indices"]
    assert ds["2-11-64-96"]["reason"] == "too_short"


def test_resize_crop_size_range_and_centre():
    x = torch.zeros(1, 3, 100, 300, dtype=torch.uint8)
    x[..., 100:200] = 255
    y = resize_crop(x, 100, 100)
    assert y.shape == (1, 3, 100, 100) and torch.all(y == 255)  # the centre third
    y = resize_crop(x, 50, 50)  # downscale by 2, crop the middle 50 columns of 150
    assert y.shape == (1, 3, 50, 50) and y[..., 5:45].min() > 250
    y = resize_crop(torch.zeros(2, 3, 30, 40), 64, 48)  # upscale to cover
    assert y.shape == (2, 3, 64, 48)


def test_item_shape_range_and_image_as_one_frame(clips):
    ds = VideoTextDataset(clips)
    v = ds["1-4-192-336"]["video"]  # 96x128 (4:3) to a 16:9 bucket: upscale + crop
    assert v.shape == (3, 4, 192, 336) and v.dtype == torch.float32 and -1 <= v.min() and v.max() <= 1
    im = ds["3-1-224-288"]
    assert im["video"].shape == (3, 1, 224, 288) and -1 <= im["video"].min() and im["video"].max() <= 1
    assert _decoded_ids(im["video"]) == [0]


def test_caption_suffix(clips, tmp_path):
    ds = VideoTextDataset(clips)
    assert ds["0-8-64-96"]["text"] == "a test clip number 0 20 FPS, 3 motion score."
    assert ds["1-4-64-96"]["text"] == "a test clip number 1 24 FPS, 6 motion score."
    assert make_caption("a cat", 23.976, 4.5) == "a cat 23.976 FPS, 5 motion score."  # half up, as released
    assert make_caption("a cat", 30.0, None) == "a cat 15 FPS."
    assert make_caption("a cat", NAN, 3.0) == "a cat 3 motion score."  # no usable fps: the motion part stays
    assert make_caption("a cat", None, None) == "a cat"
    no_motion = pd.read_csv(clips).drop(columns=["score_vmafmotion"])
    assert VideoTextDataset(no_motion)["2-4-64-96"]["text"] == "a test clip number 2 15 FPS."


def test_already_suffixed_captions_are_reported(clips, caplog):
    old = pd.read_csv(clips)
    old.loc[1, "text"] = old.loc[1, "text"] + " 24 FPS, 6 motion score."  # a table curated with the suffix
    with caplog.at_level("WARNING", logger="soraflow.training.data.dataset"):
        VideoTextDataset(old)
    assert "1 caption(s) already end with an FPS / motion-score suffix (first: row 1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="soraflow.training.data.dataset"):
        VideoTextDataset(clips)
    assert "suffix" not in caplog.text


def test_cached_mode_returns_latents_and_text_features(tmp_path):
    from safetensors.torch import save_file

    rows = []
    for i in range(2):
        save_file({"latents": torch.full((4, 2, 3, 3), float(i))}, tmp_path / f"lat{i}.safetensors")
        torch.save(torch.full((5, 8), float(i)), tmp_path / f"t5_{i}.pt")
        torch.save({"pooled": torch.ones(8)}, tmp_path / f"clip_{i}.pt")
        rows.append({"path": f"v{i}.mp4", "text": "x", "num_frames": 5, "height": 24, "width": 24,
                     "aspect_ratio": 1.0, "resolution": 576, "fps": 24.0, "latents_path": f"lat{i}.safetensors",
                     "text_t5_path": f"t5_{i}.pt", "text_clip_path": f"clip_{i}.pt"})
    rows.append(dict(rows[0], latents_path="missing.safetensors"))
    p = tmp_path / "cached.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    ds = VideoTextDataset(p)
    assert ds.cached
    batch = collate_skip([ds["0-5-24-24"], ds["1-5-24-24"], ds["2-5-24-24"]])
    assert batch["num_samples"] == 2 and batch["video"].shape == (2, 4, 2, 3, 3)
    assert batch["video"][1].eq(1).all() and batch["text_t5"].shape == (2, 5, 8)
    assert batch["skipped"][0][1] == "missing_file"


# ------------------------------------------------------------------------------------ broken clips and the loader
@pytest.fixture(scope="module")
def broken_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    good = [dict(name=f"good{i}", num_frames=6, fps=24, height=64, width=64) for i in range(3)]
    bad = [dict(name="trunc", kind="truncated", num_frames=6), dict(name="zero", kind="empty", num_frames=6),
           dict(name="txt", kind="text", num_frames=6), dict(name="gone", kind="missing", num_frames=6)]
    imgs = [dict(name=f"img{i}", kind="image", height=64, width=64) for i in range(2)]
    return make_video_table(d, good + bad + imgs)


BROKEN_CFG = {"64px": {1: (1.0, 2), 4: (1.0, 7)}}


def test_broken_clips_are_skipped_with_reason_and_warning(broken_table, caplog):
    ds = VideoTextDataset(broken_table)
    with caplog.at_level(logging.WARNING, logger="soraflow.training.data.dataset"):
        out = [ds[f"{i}-4-64-64"] for i in range(3, 7)]
    assert [o["reason"] for o in out] == ["unreadable", "empty_file", "unreadable", "missing_file"]
    assert all(o["skipped"] for o in out)
    assert ds.skip_counts == Counter(unreadable=2, empty_file=1, missing_file=1)
    assert "trunc.mp4" in caplog.text and "empty_file" in caplog.text
    assert ds["999-4-64-64"]["reason"] == "bad_index" and ds["garbage"]["reason"] == "bad_index"


def test_dataloader_with_two_workers_drops_broken_clips_and_resumes_exactly(broken_table):
    kw = dict(rank=0, world_size=1, seed=3, num_workers=2, prefetch_factor=2)
    loader = build_dataloader(broken_table, BROKEN_CFG, **kw)
    assert loader.sampler is not None and len(loader) == 2
    batches = list(loader)
    assert [b["num_samples"] for b in sorted(batches, key=lambda b: b["num_samples"])] == [2, 3]
    vids = next(b for b in batches if b["num_samples"] == 3)
    assert vids["video"].shape == (3, 3, 4, 64, 64)
    assert loader.skip_counts == Counter(unreadable=2, empty_file=1, missing_file=1)
    # resume after one batch taken: the loader counts what the trainer got, not what workers prefetched
    first = build_dataloader(broken_table, BROKEN_CFG, **kw)
    it = iter(first)
    b0 = next(it)
    state = first.state_dict()
    del it
    assert state["sampler"]["consumed_micro_batches"] == 1
    resumed = build_dataloader(broken_table, BROKEN_CFG, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["index"] for b in [b0] + rest] == [b["index"] for b in batches]
