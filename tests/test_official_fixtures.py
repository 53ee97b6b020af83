"""soraflow against golden outputs of the official Open-Sora 2.0 code (tests/fixtures/official/).

The fixtures were made by tests/fixtures/make_official_fixtures.py from the official checkout recorded in
manifest.json; docs/fidelity.md lists what must match and the deliberate deviations these tests pin down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"
sys.path.insert(0, str(FIXTURES))

from weights import fill_weights  # noqa: E402

from soraflow.models.aspect import closest_aspect_ratio, inference_size, num_pixels_from_name, training_aspect_ratios  # noqa: E402
from soraflow.models.flow import (  # noqa: E402
    inference_shift_alpha,
    inference_timesteps,
    noisy_latent,
    prepare_train_condition,
    resolution_shift_alpha,
    sample_train_timesteps,
    train_shift_alpha,
    velocity_target,
)
from soraflow.models.packing import pack, unpack  # noqa: E402
from soraflow.models.text.captions import inference_caption  # noqa: E402
from soraflow.training.data.buckets import BucketConfig  # noqa: E402
from soraflow.training.data.dataset import make_caption  # noqa: E402


def _json(name):
    return json.loads((OFFICIAL / name).read_text())


@pytest.fixture(scope="module")
def aspect():
    return _json("aspect.json")


def test_manifest_records_the_reference_commit():
    m = _json("manifest.json")
    assert m["reference_commit"].startswith("7ad6a96")
    assert sum(p.stat().st_size for p in OFFICIAL.iterdir()) < 2_000_000


# ------------------------------------------------------------------------------------------- sizes, buckets
@pytest.mark.parametrize("divisor", [16, 32])
def test_inference_sizes_match_official_for_every_resolution_and_ratio(aspect, divisor):
    official = aspect["inference"][str(divisor)]
    wrong = [(res, ar, tuple(hw), inference_size(res, ar, divisor))
             for res, table in official.items() for ar, hw in table.items()
             if inference_size(res, ar, divisor) != tuple(hw)]
    assert not wrong, f"{len(wrong)} sizes differ (res, ratio, official, soraflow): {wrong[:6]}"
    assert len([1 for t in official.values() for _ in t]) == 7 * 15


def test_direct_size_rule_is_kept_behind_a_flag():
    assert inference_size("256px", "3:4") == (288, 224)  # released: the transpose of 4:3
    assert inference_size("256px", "3:4", rule="direct") == (304, 208)  # computed from 3/4 itself
    assert inference_size("256px", "21:9") == inference_size("256px", "21:9", rule="direct")  # not in the table


@pytest.mark.parametrize("divisor", [16, 32])
def test_training_tables_match_official(aspect, divisor):
    for name, entry in aspect["training"][str(divisor)].items():
        assert num_pixels_from_name(name) == entry["pixels"], name
        table = training_aspect_ratios(name, divisor)
        assert [[k, h, w] for k, (h, w) in table.items()] == entry["table"], name


def _expand(runs, heights):
    out, idx = [], 0
    for h in heights:
        while idx + 1 < len(runs) and runs[idx + 1][0] <= h:
            idx += 1
        out.append(runs[idx][1])
    return out


@pytest.mark.parametrize("divisor", [16, 32])
def test_closest_ratio_matches_official_on_3101_ratios(aspect, divisor):
    grid = aspect["closest_grid"]
    heights = np.arange(*grid["heights"])
    width = grid["width"]
    for res, runs in aspect["closest"][str(divisor)].items():
        expected = _expand(runs, heights)
        table = training_aspect_ratios(res, divisor)
        scalar = [closest_aspect_ratio(float(h), float(width), table) for h in heights]
        cfg = BucketConfig({res: {1: (1.0, 1)}}, divisor=divisor)
        n = len(heights)
        # ×4 keeps every h/w bit-identical (the quotient of the exact products is the same real number) and
        # clears the 0.8 × budget size floor of the largest resolution
        a = cfg.assign(np.ones(n, dtype=int), 4 * heights, np.full(n, 4 * width), np.full(n, np.nan))
        vector = [a.bucket_of(i).aspect_ratio for i in range(n)]
        for got, what in ((scalar, "closest_aspect_ratio"), (vector, "BucketConfig.assign")):
            bad = [(int(h), e, g) for h, e, g in zip(heights, expected, got) if e != g]
            assert not bad, f"{res} D={divisor} {what}: {len(bad)} of {n} ratios differ, e.g. {bad[:4]}"
        sizes_sf = [table[k] for k in vector]
        assert sizes_sf == [table[k] for k in expected]


@pytest.mark.parametrize("divisor", [16, 32])
def test_bucket_assignment_matches_official(aspect, divisor):
    fx = aspect["buckets"][str(divisor)]
    config = {r: {int(t): tuple(v) for t, v in c.items()} for r, c in fx["config"].items()}
    cfg = BucketConfig(config, divisor=divisor, fps_max=fx["fps_max"])
    rows = np.array(fx["rows"], dtype=float)
    a = cfg.assign(rows[:, 0].astype(int), rows[:, 1], rows[:, 2], rows[:, 3])
    for i, expected in enumerate(fx["assigned"]):
        b = a.bucket_of(i)
        got = None if b is None else [b.resolution, b.num_frames, b.aspect_ratio, *b.thw]
        assert got == expected, f"row {fx['rows'][i]} (T, H, W, fps): official {expected}, soraflow {got}"


# ------------------------------------------------------------------------------------------------- captions
def test_training_captions_match_official():
    fx = _json("captions.json")
    rows = fx["rows"]
    for variant in fx["training"].values():
        for row, expected in zip(rows, variant["text"]):
            fps = None if row["fps"] is None else float(row["fps"])
            motion = None if (row["score_vmafmotion"] is None or not variant["vmaf"]) else float(row["score_vmafmotion"])
            got = make_caption(row["text"], fps, motion, fps_max=variant["fps_max"])
            assert got == expected, f"{row} fps_max={variant['fps_max']} vmaf={variant['vmaf']}"


def test_inference_captions_match_official():
    for case in _json("captions.json")["inference"]:
        got = inference_caption(case["prompt"], fps=case["fps"], motion_score=case["motion_score"])
        assert got == case["text"], case


# ------------------------------------------------------------------------------------------------ timesteps
def test_inference_schedules_match_official():
    for c in _json("schedules.json")["inference"]:
        alpha = resolution_shift_alpha(c["image_seq_len"], c["num_frames"])
        assert inference_timesteps(c["steps"], alpha) == c["timesteps"], c


@pytest.fixture(scope="module")
def train_fx():
    from safetensors.torch import load_file

    return _json("training_inputs.json"), load_file(str(OFFICIAL / "training_inputs.safetensors"))


def _latent_thw(kind, meta):
    _, _, f, h, w = meta["cases"][kind]["shape"]
    if meta["cases"][kind]["is_causal"]:
        return (f - 1) // 4 + 1, h // 8, w // 8
    return f // 4, h // 32, w // 32


@pytest.mark.parametrize("kind", ["hunyuan_vae", "dc_ae"])
@pytest.mark.parametrize("dname", ["fp32", "bf16"])
def test_training_timesteps_match_official(train_fx, kind, dname):
    meta, tensors = train_fx
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    t_lat, h, w = _latent_thw(kind, meta)
    shape = (2, 8 if kind == "dc_ae" else 16, t_lat, h, w)
    official = tensors[f"{kind}.{dname}.timesteps"]
    assert official.dtype == dtype
    # the released rule: (H·W)//4 tokens whatever the patch size
    t = sample_train_timesteps(2, train_shift_alpha(shape), generator=torch.Generator().manual_seed(meta["seed_t"]),
                               dtype=dtype)
    assert t.dtype == dtype and torch.equal(t, official)
    patch = meta["cases"][kind]["patch_size"]
    if patch == 2:  # what the trainer uses: the same number for the HunyuanVideo VAE (patch 2)
        assert inference_shift_alpha(shape, patch) == train_shift_alpha(shape)
    else:  # deliberate deviation (docs/fidelity.md): the DC-AE model trains with the sampler's patch-aware α
        assert inference_shift_alpha(shape, patch) > train_shift_alpha(shape)


class _FakeText:
    """T5/CLIP stand-in: fixed features, enough for DiTObjective.prepare."""

    def encode(self, captions, seq_align=1):
        return {"txt": torch.ones(len(captions), 3, 8), "y_vec": torch.ones(len(captions), 8)}

    def null(self, batch_size=1, length=3):
        return {"txt": torch.zeros(batch_size, length, 8), "y_vec": torch.zeros(batch_size, 8)}


class _AverageAE:
    latent_channels, time_compression, spatial_compression, is_causal = 4, 4, 8, True

    def latent_frames(self, n):
        return (n - 1) // 4 + 1

    def encode(self, video, generator=None):
        x = torch.nn.functional.avg_pool3d(video[:, :1].float(), (1, 8, 8))
        z = torch.cat([x[:, :, :1]] + [x[:, :, 1 + 4 * j: 5 + 4 * j].mean(2, keepdim=True)
                                        for j in range((video.shape[2] - 1) // 4)], 2)
        return z.repeat(1, 4, 1, 1, 1).to(video.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_objective_samples_t_in_the_training_dtype(dtype):
    from soraflow.training.objective import DiTObjective

    obj = DiTObjective(_AverageAE(), _FakeText(), patch_size=2, cond_embed=False, condition_config=None,
                       dropout_ratio=0.0, dtype=dtype)
    video = torch.rand(16, 3, 5, 16, 16) * 2 - 1
    t = obj.prepare(video, ["x"] * 16, torch.Generator().manual_seed(0)).kwargs["timesteps"]
    assert t.dtype == dtype
    rounded = t.float().bfloat16().float()
    if dtype == torch.float32:  # fp32 training sees fp32 t, not bf16-rounded values (as released)
        assert (t.float() != rounded).sum() >= 12
    else:
        assert torch.equal(t.float(), rounded)


# ------------------------------------------------------------------------------------------- autoencoders
def _soraflow_ae(kind, dtype):
    if kind == "dc_ae":
        from soraflow.models.dc_ae import DCAEConfig, VideoDCAE

        tiny = _json("manifest.json")["tiny_configs"]["dc_ae"]
        cfg = DCAEConfig(latent_channels=tiny["latent_channels"], width_list=tuple(tiny["width_list"]),
                         encoder_depth_list=tuple(tiny["depth_list"]), decoder_depth_list=tuple(tiny["depth_list"]),
                         attn_head_dim=32, scaling_factor=None)
        model = VideoDCAE(cfg, init_weights=False)
    else:
        from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE

        model = HunyuanVideoVAE(HunyuanVAEConfig.tiny())
    model.load_state_dict(fill_weights(model.state_dict(), kind), strict=True)
    return model.to(dtype).eval()


class _ModeAE:
    """The soraflow autoencoder as the training fixtures used the official one: fp32 encode (Hunyuan posterior
    mode), cast to the training dtype."""

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype
        self.is_causal, self.time_compression = model.is_causal, model.time_compression
        self.latent_channels, self.spatial_compression = model.latent_channels, model.spatial_compression

    def latent_frames(self, n):
        return self.model.latent_frames(n)

    def encode(self, video, generator=None):
        with torch.no_grad():
            if self.model.is_causal:
                z = self.model.encode(video.float(), sample=False)
            else:
                z = self.model.encode(video.float())
        return z.to(self.dtype)


@pytest.fixture(scope="module")
def ae_fx():
    from safetensors.torch import load_file

    return _json("autoencoders.json"), load_file(str(OFFICIAL / "autoencoders.safetensors"))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kind", ["dc_ae", "hunyuan_vae"])
@pytest.mark.parametrize("name", ["image", "video"])
def test_autoencoders_match_official_in_fp32_and_bf16(ae_fx, kind, name):
    meta, fx = ae_fx
    inp = meta["inputs"][kind][name]
    x = torch.rand(inp["shape"], generator=torch.Generator().manual_seed(inp["seed"])) * 2 - 1
    errors = {}
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = _soraflow_ae(kind, dtype)
        with torch.no_grad():
            z = model.encode(x.to(dtype), sample=False) if kind == "hunyuan_vae" else model.encode(x.to(dtype))
            rec = model.decode(fx[f"{kind}.{name}.fp32.latent"].to(dtype))
        errors[dname] = (_rel(z, fx[f"{kind}.{name}.{dname}.latent"]), _rel(rec, fx[f"{kind}.{name}.{dname}.decoded"]))
    assert errors["fp32"][0] < 1e-5 and errors["fp32"][1] < 1e-5, errors
    # bf16: as close to the official bf16 output as the official bf16 output is to its own fp32 one
    for i, part in enumerate(("latent", "decoded")):
        own = _rel(fx[f"{kind}.{name}.bf16.{part}"], fx[f"{kind}.{name}.fp32.{part}"])
        assert errors["bf16"][i] < 2 * own + 1e-3, (part, errors, own)


# --------------------------------------------------------------------------------------- training inputs
@pytest.mark.parametrize("kind", ["hunyuan_vae", "dc_ae"])
@pytest.mark.parametrize("dname", ["fp32", "bf16"])
def test_training_inputs_match_official_for_every_condition(train_fx, kind, dname):
    meta, fx = train_fx
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    case = meta["cases"][kind]
    p = case["patch_size"]
    ae = _ModeAE(_soraflow_ae(kind, torch.float32), dtype)
    video = (torch.rand(case["shape"], generator=torch.Generator().manual_seed(case["seed"])) * 2 - 1).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    x0 = None
    for ct in meta["cond_types"]:
        tc = prepare_train_condition(ae, video, cond_types=[ct] * video.shape[0])
        torch.testing.assert_close(pack(tc.cond, p), fx[f"{kind}.{dname}.{ct}.cond"], **tol,
                                   msg=lambda m: f"{kind} {dname} {ct} cond: {m}")
        x0 = tc.x0
    torch.testing.assert_close(pack(x0, p), fx[f"{kind}.{dname}.x_0"], **tol)
    # x_t and the target from the official t and noise, as DiTObjective.prepare computes them
    lat = x0.shape
    noise = unpack(fx[f"{kind}.{dname}.x_1"], p, lat[2], lat[3], lat[4])
    t = fx[f"{kind}.{dname}.timesteps"]
    x_t = pack(noisy_latent(x0.float(), noise.float(), t.float()).to(dtype), p)
    target = pack(velocity_target(x0.float(), noise.float()), p)
    torch.testing.assert_close(x_t, fx[f"{kind}.{dname}.x_t"], **tol)
    torch.testing.assert_close(target.to(dtype), fx[f"{kind}.{dname}.target"], **tol)
    assert x_t.dtype == fx[f"{kind}.{dname}.x_t"].dtype
