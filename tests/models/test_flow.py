"""Flow matching, visual conditions and the guided sampler, checked against closed forms
(docs/models.md#flow-matching-objective to #sampling-and-guidance)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from soraflow.models.flow import (
    SIGMA_MIN,
    allowed_condition_weights,
    build_cond,
    combine_guidance,
    condition_mask,
    draw_condition_types,
    flow_matching_loss,
    image_guidance_ramp,
    inference_latent_shape,
    inference_shift_alpha,
    inference_timesteps,
    initial_noise,
    noisy_latent,
    oscillated_scale,
    oscillation_schedule,
    pack_frame_scale,
    place_references,
    prepare_inference_condition,
    prepare_train_condition,
    reference_frames,
    resolution_shift_alpha,
    sample,
    sample_train_timesteps,
    shift_timesteps,
    three_pass_velocity,
    train_shift_alpha,
    two_pass_velocity,
    velocity_target,
)
from soraflow.models.packing import pack

# ------------------------------------------------------------------------------------------------------
# Objective
# ------------------------------------------------------------------------------------------------------


def test_noisy_latent_endpoints():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g)
    noise = torch.randn(2, 4, 3, 4, 4, generator=g)
    ones = torch.ones(2)
    assert torch.equal(noisy_latent(x0, noise, ones), noise)  # t = 1: pure noise, exactly
    x_at0 = noisy_latent(x0, noise, torch.zeros(2))
    # t = 0: x0 plus the σ_min floor of noise (1e-5), i.e. x0 up to σ_min.
    torch.testing.assert_close(x_at0, x0 + SIGMA_MIN * noise, rtol=0, atol=1e-7)
    assert (x_at0 - x0).abs().max() <= SIGMA_MIN * noise.abs().max() + 1e-7
    # per-sample t broadcasts over the sample
    t = torch.tensor([0.25, 0.75])
    xt = noisy_latent(x0, noise, t)
    manual1 = 0.25 * x0[1] + (0.75 + SIGMA_MIN * 0.25) * noise[1]
    torch.testing.assert_close(xt[1], manual1)


def test_velocity_target_is_time_derivative():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=torch.float64)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(v, (1 - SIGMA_MIN) * noise - x0)
    for t0 in (0.1, 0.5, 0.9):
        eps = 1e-6
        tp, tm = torch.full((2,), t0 + eps, dtype=torch.float64), torch.full((2,), t0 - eps, dtype=torch.float64)
        fd = (noisy_latent(x0, noise, tp) - noisy_latent(x0, noise, tm)) / (2 * eps)
        torch.testing.assert_close(fd, v, rtol=1e-6, atol=1e-8)


def test_loss_is_fp32_mse():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 5, generator=g).bfloat16()
    b = torch.randn(3, 5, generator=g).bfloat16()
    loss = flow_matching_loss(a, b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((a.float() - b.float()) ** 2).mean())


# ------------------------------------------------------------------------------------------------------
# Shift
# ------------------------------------------------------------------------------------------------------

HUNYUAN = dict(latent_channels=16, time_compression=4, spatial_compression=8, is_causal=True, patch_size=2)


@pytest.mark.parametrize(
    "frames,height,width,expected",
    [
        (129, 256, 256, 5.745),  # 33 latent frames x 16x16 tokens = 256/frame
        (129, 192, 336, 5.733),  # 256px 16:9 -> 12x21 = 252 tokens/frame
        (129, 576, 1024, 11.87),  # 768px 16:9 -> 36x64 = 2304 tokens/frame
        (1, 768, 768, 2.067),  # 768px image -> 48x48 = 2304
        (1, 1024, 1024, 3.0),  # 1024px image -> 64x64 = 4096
    ],
)
def test_alpha_worked_values(frames, height, width, expected):
    shape = inference_latent_shape(1, frames, height, width, **HUNYUAN)
    alpha = inference_shift_alpha(shape, patch_size=2)
    assert alpha == pytest.approx(expected, abs=6e-4 if expected < 10 else 6e-3)
    assert train_shift_alpha(shape) == pytest.approx(alpha)  # patch 2: train and inference agree


def test_alpha_formula_and_dcae_train_inference_disagreement():
    assert resolution_shift_alpha(256, 1) == pytest.approx(1.0)
    assert resolution_shift_alpha(4096, 1) == pytest.approx(3.0)
    assert resolution_shift_alpha(256, 33) == pytest.approx(math.sqrt(33))
    dcae = inference_latent_shape(
        1, 128, 768, 768, latent_channels=128, time_compression=4, spatial_compression=32, is_causal=False,
        patch_size=1,
    )
    assert dcae == (1, 128, 32, 24, 24)
    assert inference_shift_alpha(dcae, patch_size=1) == pytest.approx(6.60, abs=5e-3)
    assert train_shift_alpha(dcae) == pytest.approx(5.33, abs=5e-3)


def test_shift_endpoints_and_monotone():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for alpha in (0.5, 1.0, 2.067, 5.745, 11.87):
        s = shift_timesteps(t, alpha)
        assert s[0] == 0 and s[-1] == pytest.approx(1.0, abs=1e-15)
        assert bool((s[1:] > s[:-1]).all())
        if alpha > 1:
            assert bool((s[1:-1] > t[1:-1]).all())  # pushes toward noise
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)
    ts = inference_timesteps(4, 3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and len(ts) == 5
    assert ts[2] == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))


def test_logit_normal_train_timesteps():
    g = torch.Generator().manual_seed(0)
    t = sample_train_timesteps(20000, alpha=1.0, generator=g, dtype=torch.float32)
    assert abs(t.median().item() - 0.5) < 0.02 and abs(t.mean().item() - 0.5) < 0.01
    assert 0 < t.min() and t.max() < 1
    g = torch.Generator().manual_seed(0)
    ts = sample_train_timesteps(20000, alpha=5.745, generator=g, dtype=torch.float32)
    torch.testing.assert_close(ts, shift_timesteps(t, 5.745))  # same draws, shifted
    assert abs(ts.median().item() - 5.745 / 6.745) < 0.02
    g = torch.Generator().manual_seed(0)
    tb = sample_train_timesteps(20000, alpha=5.745, generator=g)
    assert tb.dtype == torch.bfloat16  # the explicit bf16 cast
    assert torch.equal(tb, ts.to(torch.bfloat16))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_train_timesteps(8, 2.0, g1), sample_train_timesteps(8, 2.0, g2))


# ------------------------------------------------------------------------------------------------------
# Guidance schedules
# ------------------------------------------------------------------------------------------------------


def test_oscillation_schedule_14_steps():
    assert oscillation_schedule(7.5, 14) == [7.5] * 10 + [7.5, 1.0, 7.5, 1.0]
    assert oscillated_scale(3.0, 9) == 3.0 and oscillated_scale(3.0, 11) == 1.0


def test_image_guidance_ramp_values():
    # g_step = linspace(3, 1, 5) = [3, 2.5, 2, 1.5, 1]; frame ramp = linspace(1, g_step, 3)
    torch.testing.assert_close(image_guidance_ramp(3.0, 0, 4, 3), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(image_guidance_ramp(3.0, 1, 4, 3), torch.tensor([1.0, 1.75, 2.5]))
    torch.testing.assert_close(image_guidance_ramp(3.0, 4, 4, 3), torch.ones(3))
    packed = pack_frame_scale(torch.tensor([1.0, 1.75, 2.5]), (2, 4, 3, 4, 4), patch_size=2)
    assert packed.shape == (2, 3 * 2 * 2, 16)
    # tokens are t-major: 4 tokens per latent frame
    torch.testing.assert_close(packed[:, :4], torch.full((2, 4, 16), 1.0))
    torch.testing.assert_close(packed[:, 4:8], torch.full((2, 4, 16), 1.75))
    torch.testing.assert_close(packed[:, 8:], torch.full((2, 4, 16), 2.5))


def test_combine_guidance_formula():
    vc, vu, vu2 = torch.tensor(3.0), torch.tensor(1.0), torch.tensor(0.5)
    assert combine_guidance(vc, vu, vu2, 1.5, 2.0).item() == pytest.approx(0.5 + 2.0 * 0.5 + 1.5 * 2.0)
    # g_txt = g_img = 1 gives the fully conditional prediction
    assert combine_guidance(vc, vu, vu2, 1.0, 1.0).item() == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------------------
# Sampler with fake denoisers
# ------------------------------------------------------------------------------------------------------

B, C, T, H, W, P = 2, 4, 3, 4, 4, 2
SHAPE = (B, C, T, H, W)
L_TXT, D_TXT, D_VEC = 5, 6, 3


class ConstantThree:
    """Returns c1 / c2 / c3 on the three thirds of the 3B batch and records every call."""

    def __init__(self, c1=3.0, c2=1.0, c3=0.5):
        self.config = SimpleNamespace(patch_size=P, in_channels=C * P * P)
        self.c = (c1, c2, c3)
        self.calls = []

    def __call__(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
        self.calls.append(dict(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=timesteps,
                               y_vec=y_vec, cond=cond, guidance=guidance))
        n = img.shape[0] // 3
        out = torch.empty_like(img)
        for k in range(3):
            out[k * n:(k + 1) * n] = self.c[k]
        return out


class LinearFake:
    """v = 0.1·img + mean(txt) + mean(y_vec) + 0.2·t + 0.5·mean(cond) + 0.7·cond_mask_feature — a fixed
    linear map of its inputs."""

    def __init__(self):
        self.config = SimpleNamespace(patch_size=P, in_channels=C * P * P)
        self.calls = 0

    def __call__(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None):
        self.calls += 1
        bias = txt.mean(dim=(1, 2)) + y_vec.mean(dim=1) + 0.2 * timesteps + 0.5 * cond.mean(dim=(1, 2))
        return 0.1 * img + bias[:, None, None] + 0.7 * cond[:, :, :1]


def _text(value, batch=B):
    return {"txt": torch.full((batch, L_TXT, D_TXT), value), "y_vec": torch.full((batch, D_VEC), value)}


def _run(model, **kw):
    # the three-pass path, whose arithmetic these tests check with per-pass constants (t2v's two-pass
    # shortcut is tested against it below)
    args = dict(text=_text(1.0), null_text=_text(0.0, 1), latent_shape=SHAPE, dtype=torch.float32, seed=0,
                predict=three_pass_velocity)
    args.update(kw)
    return sample(model, **args)


def test_one_euler_step_matches_hand_computation():
    m = ConstantThree()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    out = _run(m, steps=1, guidance_text=7.5, guidance_image=3.0, noise=noise)
    v_hat = 0.5 + 3.0 * (1.0 - 0.5) + 7.5 * (3.0 - 1.0)  # v_u2 + g_img(v_u - v_u2) + g_txt(v_c - v_u)
    torch.testing.assert_close(out, noise + (0.0 - 1.0) * v_hat)
    assert len(m.calls) == 1 and m.calls[0]["img"].shape[0] == 3 * B


def test_multi_step_with_oscillation_and_shift():
    m = ConstantThree()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    steps = 14
    out = _run(m, steps=steps, noise=noise)  # shifted schedule, text + image oscillation
    ts = inference_timesteps(steps, inference_shift_alpha(SHAPE, P))
    expected = noise.clone()
    for i in range(steps):
        g_t, g_i = oscillated_scale(7.5, i), oscillated_scale(3.0, i)
        expected = expected + (ts[i + 1] - ts[i]) * (0.5 + g_i * 0.5 + g_t * 2.0)
    torch.testing.assert_close(out, expected)
    assert len(m.calls) == steps  # one model call per step ...
    for i, call in enumerate(m.calls):  # ... on a batch of 3B, at the current t
        assert call["img"].shape == (3 * B, T * (H // P) * (W // P), C * P * P)
        assert torch.equal(call["timesteps"], torch.full((3 * B,), ts[i]))


def test_model_inputs_are_batched_three_ways():
    m = ConstantThree()
    ref = torch.randn(B, C, 1, H, W, generator=torch.Generator().manual_seed(7))
    txt = torch.randn(B, L_TXT, D_TXT)
    y = torch.randn(B, D_VEC)
    null = _text(-2.0, 1)
    sample(m, text={"txt": txt, "y_vec": y}, null_text=null, latent_shape=SHAPE, cond_type="i2v_head",
           ref_latent=ref, steps=2, dtype=torch.float32)
    call = m.calls[0]
    assert torch.equal(call["img"][:B], call["img"][B:2 * B]) and torch.equal(call["img"][:B], call["img"][2 * B:])
    assert torch.equal(call["txt"][:B], txt) and bool((call["txt"][B:] == -2.0).all())
    assert torch.equal(call["y_vec"][:B], y) and bool((call["y_vec"][B:] == -2.0).all())
    mask = condition_mask("i2v_head", SHAPE, is_causal=True)
    placed = place_references("i2v_head", ref, SHAPE, is_causal=True)
    expected_cond = pack(build_cond(mask, placed), P)
    assert call["cond"].shape == (3 * B, T * 4, (C + 1) * P * P)
    torch.testing.assert_close(call["cond"][:B], expected_cond)
    torch.testing.assert_close(call["cond"][B:2 * B], expected_cond)
    assert bool((call["cond"][2 * B:] == 0).all())
    assert bool((call["txt_ids"] == 0).all()) and call["img_ids"].shape == (3 * B, T * 4, 3)
    assert call["img_ids"][0, -1].tolist() == [T - 1, H // P - 1, W // P - 1]


def test_image_ramp_in_sampler_two_steps_i2v_tail():
    m = ConstantThree()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    ref = torch.randn(B, C, 1, H, W, generator=torch.Generator().manual_seed(9))
    g_img, g_txt = 3.0, 2.0
    out = _run(m, steps=2, shift=False, noise=noise, cond_type="i2v_tail", ref_latent=ref,
               guidance_image=g_img, guidance_text=g_txt)
    expected = noise.clone()
    for i, g_step in enumerate((3.0, 2.0)):  # linspace(3, 1, 3)[i]
        ramp = torch.linspace(1.0, g_step, T).reshape(1, 1, T, 1, 1)
        expected = expected - 0.5 * (0.5 + ramp * 0.5 + g_txt * 2.0)
    torch.testing.assert_close(out[:, :, :-1], expected[:, :, :-1])
    torch.testing.assert_close(out[:, :, -1:], ref)  # tail reference written back exactly


def test_ramp_only_for_i2v_and_scale_above_one():
    infos = []
    ref = torch.randn(B, C, 1, H, W)
    _run(ConstantThree(), steps=14, cond_type="i2v_head", ref_latent=ref, progress=infos.append)
    assert [s.step for s in infos] == list(range(14))
    with_ramp = [s.image_ramp is not None for s in infos]
    assert with_ramp == [True] * 10 + [True, False, True, False]  # oscillated g_img = 1 -> no ramp
    assert [s.text_scale for s in infos] == oscillation_schedule(7.5, 14)
    torch.testing.assert_close(infos[1].image_ramp, image_guidance_ramp(3.0, 1, 14, T))
    infos.clear()
    _run(ConstantThree(), steps=3, cond_type="i2v_head", ref_latent=ref, guidance_image=1.0, progress=infos.append)
    assert all(s.image_ramp is None for s in infos)
    infos.clear()
    _run(ConstantThree(), steps=3, cond_type="i2v_head", ref_latent=ref, scale_temporal_osci=False,
         progress=infos.append)
    assert all(s.image_ramp is None for s in infos)
    infos.clear()
    _run(ConstantThree(), steps=3, progress=infos.append)  # t2v
    assert all(s.image_ramp is None for s in infos)
    infos.clear()
    _run(ConstantThree(), steps=12, text_osci=False, image_osci=False, progress=infos.append)
    assert all(s.text_scale == 7.5 and s.image_scale == 3.0 for s in infos)


def test_t2v_image_term_vanishes():
    a = _run(LinearFake(), steps=3, guidance_image=3.0, dtype=torch.bfloat16)
    b = _run(LinearFake(), steps=3, guidance_image=9.0, dtype=torch.bfloat16)
    assert torch.equal(a, b)
    # with an image condition the image scale matters
    ref = torch.randn(B, C, 1, H, W)
    c = _run(LinearFake(), steps=3, guidance_image=3.0, cond_type="i2v_head", ref_latent=ref)
    d = _run(LinearFake(), steps=3, guidance_image=9.0, cond_type="i2v_head", ref_latent=ref)
    assert not torch.allclose(c[:, :, 1:], d[:, :, 1:])


def test_seed_determinism_and_bf16_noise():
    z = initial_noise(SHAPE, seed=11)
    assert z.dtype == torch.bfloat16
    assert torch.equal(z, torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.bfloat16))
    m = LinearFake()
    a = _run(m, steps=2, seed=1, dtype=torch.bfloat16)
    b = _run(m, steps=2, seed=1, dtype=torch.bfloat16)
    c = _run(m, steps=2, seed=2, dtype=torch.bfloat16)
    assert a.dtype == torch.float32 and a.shape == SHAPE
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reference_frames_overwritten():
    heads = torch.randn(B, C, 1, H, W, generator=torch.Generator().manual_seed(1))
    tails = torch.randn(B, C, 1, H, W, generator=torch.Generator().manual_seed(2))
    out = _run(LinearFake(), steps=2, cond_type="i2v_loop", ref_latent=[heads, tails])
    assert torch.equal(out[:, :, :1], heads) and torch.equal(out[:, :, -1:], tails)
    assert not torch.allclose(out[:, :, 1:2], heads)
    out = _run(LinearFake(), steps=2, cond_type="i2v_head", ref_latent=heads)
    assert torch.equal(out[:, :, :1], heads)
    # a full-size placed reference works too
    placed = place_references("i2v_tail", tails, SHAPE, is_causal=True)
    out = _run(LinearFake(), steps=2, cond_type="i2v_tail", ref_latent=placed)
    assert torch.equal(out[:, :, -1:], tails)


def test_sampler_rejects_bad_inputs():
    with pytest.raises(ValueError):
        _run(LinearFake(), steps=1, cond_type="i2v_head")  # no reference
    with pytest.raises(ValueError):
        _run(LinearFake(), steps=1, latent_shape=(B, C + 1, T, H, W))  # channels vs in_channels


# ------------------------------------------------------------------------------------------------------
# Conditions
# ------------------------------------------------------------------------------------------------------


def _frames(mask):
    return [int(i) for i in torch.nonzero(mask[0, 0, :, 0, 0]).flatten()]


@pytest.mark.parametrize(
    "cond_type,t_lat,causal_frames,noncausal_frames",
    [
        ("t2v", 12, [], []),
        ("i2v_head", 12, [0], [0]),
        ("i2v_tail", 12, [11], [11]),
        ("i2v_loop", 12, [0, 11], [0, 11]),
        ("v2v_head", 12, list(range(9)), list(range(8))),
        ("v2v_tail", 12, list(range(3, 12)), list(range(4, 12))),
        ("v2v_head_easy", 20, list(range(17)), list(range(16))),
        ("v2v_tail_easy", 20, list(range(3, 20)), list(range(4, 20))),
    ],
)
def test_condition_masks(cond_type, t_lat, causal_frames, noncausal_frames):
    shape = (1, 2, t_lat, 2, 2)
    m_c = condition_mask(cond_type, shape, is_causal=True)
    m_n = condition_mask(cond_type, shape, is_causal=False)
    assert m_c.shape == (1, 1, t_lat, 2, 2)
    assert _frames(m_c) == causal_frames and _frames(m_n) == noncausal_frames
    assert bool((m_c == m_c[:, :, :, :1, :1]).all())  # constant over space


def test_reference_frame_counts():
    assert reference_frames("v2v_head", is_causal=True) == (33, 9)
    assert reference_frames("v2v_tail_easy", is_causal=True) == (65, 17)
    assert reference_frames("v2v_head", is_causal=False) == (32, 8)
    assert reference_frames("v2v_head_easy", is_causal=False) == (64, 16)
    assert reference_frames("i2v_loop", is_causal=False) == (1, 1)


def test_build_cond_and_inference_condition():
    ref = torch.randn(1, 3, 1, 2, 2)
    mask, masked = prepare_inference_condition("i2v_head", (1, 3, 4, 2, 2), ref, is_causal=True)
    cond = build_cond(mask, masked)
    assert cond.shape == (1, 4, 4, 2, 2)
    assert torch.equal(cond[:, :1], mask)
    torch.testing.assert_close(cond[:, 1:, 0], ref[:, :, 0])
    assert bool((cond[:, 1:, 1:] == 0).all())
    full = torch.randn(1, 3, 4, 2, 2)
    c2 = build_cond(mask, full)  # build_cond applies the mask itself
    assert bool((c2[:, 1:, 1:] == 0).all()) and torch.equal(c2[:, 1:, :1], full[:, :, :1])
    m0, r0 = prepare_inference_condition("t2v", (1, 3, 4, 2, 2), is_causal=True)
    assert not m0.any() and not r0.any()


def test_condition_draw_weights_and_fallback():
    w = {"t2v": 1, "i2v_head": 5, "i2v_loop": 1, "i2v_tail": 1}
    before = dict(w)
    g = torch.Generator().manual_seed(0)
    types = draw_condition_types(w, 8000, 33, is_causal=True, generator=g)
    assert w == before  # never mutated
    assert abs(types.count("i2v_head") / 8000 - 5 / 8) < 0.02
    assert abs(types.count("t2v") / 8000 - 1 / 8) < 0.015
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert draw_condition_types(w, 16, 33, is_causal=True, generator=g1) == draw_condition_types(
        w, 16, 33, is_causal=True, generator=g2
    )
    # short clips: v2v dropped when T_lat <= reference latents; images only t2v
    v = {"v2v_head": 1, "v2v_head_easy": 1, "i2v_head": 1}
    assert allowed_condition_weights(v, 9, is_causal=True) == {"i2v_head": 1.0}
    assert allowed_condition_weights(v, 9, is_causal=False) == {"v2v_head": 1.0, "i2v_head": 1.0}
    assert allowed_condition_weights(v, 18, is_causal=True) == {"v2v_head": 1.0, "v2v_head_easy": 1.0, "i2v_head": 1.0}
    assert allowed_condition_weights(v, 17, is_causal=True) == {"v2v_head": 1.0, "i2v_head": 1.0}
    assert allowed_condition_weights({"v2v_tail": 1}, 5, is_causal=True) == {"t2v": 1.0}
    assert allowed_condition_weights(w, 1, is_causal=True) == {"t2v": 1.0}
    with pytest.raises(ValueError):
        allowed_condition_weights({"i2v_middle": 1}, 10, is_causal=True)


class FakeAE:
    """Deterministic fake autoencoder: 2x spatial average pool, first 2 channels, temporal compression 4
    (causal: frame 0 alone then groups of 4; non-causal: groups of 4, a single frame -> 1 latent), plus
    0.01·(number of input frames) so a separately encoded reference differs from a slice of x0."""

    latent_channels = 2
    time_compression = 4
    spatial_compression = 2

    def __init__(self, is_causal):
        self.is_causal = is_causal
        self.calls = []

    def latent_frames(self, n):
        if n == 1:
            return 1
        if self.is_causal:
            assert (n - 1) % 4 == 0
            return (n - 1) // 4 + 1
        assert n % 4 == 0
        return n // 4

    def encode(self, video, generator=None):
        self.calls.append(video.shape[2])
        b, _, f, h, w = video.shape
        x = torch.nn.functional.avg_pool3d(video[:, :2], (1, 2, 2))
        if f == 1:
            groups = [x[:, :, :1]]
        elif self.is_causal:
            groups = [x[:, :, :1]] + [x[:, :, 1 + 4 * j: 5 + 4 * j].mean(2, keepdim=True) for j in range((f - 1) // 4)]
        else:
            groups = [x[:, :, 4 * j: 4 * j + 4].mean(2, keepdim=True) for j in range(f // 4)]
        return torch.cat(groups, dim=2) + 0.01 * f

    def decode(self, latent):
        raise AssertionError("the training-condition code must never decode")


def test_prepare_train_condition_causal():
    ae = FakeAE(is_causal=True)
    video = torch.randn(4, 3, 41, 4, 4, generator=torch.Generator().manual_seed(0))  # 41 frames -> 11 latents
    types = ["t2v", "i2v_head", "i2v_loop", "v2v_tail"]
    tc = prepare_train_condition(ae, video, cond_types=types)
    assert tc.x0.shape == (4, 2, 11, 2, 2) and tc.cond.shape == (4, 3, 11, 2, 2)
    torch.testing.assert_close(tc.x0, ae.encode(video))
    assert [_frames(tc.mask[i:i + 1]) for i in range(4)] == [[], [0], [0, 10], list(range(2, 11))]
    assert not tc.ref_latent[0].any()
    torch.testing.assert_close(tc.ref_latent[1, :, 0], ae.encode(video[1:2, :, :1])[0, :, 0])  # first frame alone
    torch.testing.assert_close(tc.ref_latent[2, :, -1], ae.encode(video[2:3, :, -1:])[0, :, 0])  # last frame alone
    torch.testing.assert_close(tc.ref_latent[3, :, 2:], ae.encode(video[3:4, :, -33:])[0])  # last 33 -> 9 latents
    assert not torch.allclose(tc.ref_latent[1, :, 0], tc.x0[1, :, 0])  # separate encode, not a slice of x0
    assert not tc.ref_latent[1, :, 1:].any()
    torch.testing.assert_close(tc.cond, torch.cat([tc.mask, tc.mask * tc.ref_latent], 1))


def test_prepare_train_condition_noncausal_and_draw():
    ae = FakeAE(is_causal=False)
    video = torch.randn(2, 3, 40, 4, 4, generator=torch.Generator().manual_seed(1))  # 40 frames -> 10 latents
    tc = prepare_train_condition(ae, video, cond_types=["v2v_head", "i2v_tail"])
    assert tc.x0.shape == (2, 2, 10, 2, 2)
    assert _frames(tc.mask[:1]) == list(range(8)) and _frames(tc.mask[1:]) == [9]
    # non-causal v2v: the first 8 latent frames of the whole clip's latent, as released (not a separate encode)
    torch.testing.assert_close(tc.ref_latent[0, :, :8], tc.x0[0, :, :8])
    assert not torch.allclose(tc.ref_latent[0, :, :8], ae.encode(video[:1, :, :32])[0])
    torch.testing.assert_close(tc.ref_latent[1, :, 9], ae.encode(video[1:2, :, -1:])[0, :, 0])
    # drawn types (generator) on a short causal clip never pick v2v
    ae = FakeAE(is_causal=True)
    short = torch.randn(3, 3, 9, 4, 4)  # 3 latents
    tc = prepare_train_condition(ae, short, {"v2v_head": 3, "i2v_head": 1}, generator=torch.Generator().manual_seed(0))
    assert tc.cond_types == ["i2v_head"] * 3
    image = torch.randn(2, 3, 1, 4, 4)
    tc = prepare_train_condition(ae, image, generator=torch.Generator().manual_seed(0))
    assert tc.cond_types == ["t2v", "t2v"] and not tc.cond.any()


def test_v2v_sampling_uses_reference_length_and_no_ramp():
    shape = (1, C, 11, H, W)
    ref = torch.randn(1, C, 9, H, W, generator=torch.Generator().manual_seed(3))  # 33 frames -> 9 latents
    m = ConstantThree()
    infos = []
    out = sample(m, text=_text(1.0, 1), null_text=_text(0.0, 1), latent_shape=shape, cond_type="v2v_head",
                 ref_latent=ref, steps=2, dtype=torch.float32, is_causal=True, progress=infos.append)
    mask_tokens = m.calls[0]["cond"][0, :, 0].reshape(11, -1)[:, 0]  # mask channel per latent frame
    assert mask_tokens.tolist() == [1.0] * 9 + [0.0] * 2
    assert all(s.image_ramp is None for s in infos)
    assert not torch.equal(out[:, :, :9], ref)  # only i2v frames are written back
    m = ConstantThree()
    sample(m, text=_text(1.0, 1), null_text=_text(0.0, 1), latent_shape=shape, cond_type="v2v_head",
           ref_latent=ref[:, :, :8], steps=1, dtype=torch.float32, is_causal=False)
    assert m.calls[0]["cond"][0, :, 0].reshape(11, -1)[:, 0].tolist() == [1.0] * 8 + [0.0] * 3


def test_inference_latent_shape_rounding():
    assert inference_latent_shape(2, 129, 200, 336, **HUNYUAN) == (2, 16, 33, 26, 42)  # 2*ceil(200/16)
    assert inference_latent_shape(1, 1, 256, 256, **HUNYUAN) == (1, 16, 1, 32, 32)
    with pytest.raises(ValueError):
        inference_latent_shape(1, 128, 256, 256, **HUNYUAN)  # causal AE needs 4k+1 frames


def test_t2v_two_pass_shortcut_equals_three_passes_on_a_real_model():
    """For t2v the third pass (null text, zero cond) has the second pass's inputs; one 2B call must give the
    video the 3B call gives, on the tiny MMDiT with random weights."""
    from soraflow.models.mmdit import MMDiT, get_config

    torch.manual_seed(0)
    model = MMDiT(get_config("tiny")).eval()
    cfg = model.config
    shape = (1, cfg.in_channels // 4, 3, 8, 8)
    text = {"txt": torch.randn(1, 6, cfg.context_in_dim), "y_vec": torch.randn(1, cfg.vec_in_dim)}
    null = {"txt": torch.randn(1, 6, cfg.context_in_dim), "y_vec": torch.randn(1, cfg.vec_in_dim)}
    batches = []

    def counting(predict):
        def wrapped(m, img, t, batch):
            batches.append(predict.__name__)
            return predict(m, img, t, batch)
        return wrapped

    with torch.no_grad():
        common = dict(text=text, null_text=null, latent_shape=shape, steps=12, dtype=torch.float32, seed=3)
        three = sample(model, predict=counting(three_pass_velocity), **common)
        default = sample(model, **common)
        fast = sample(model, predict=counting(two_pass_velocity), **common)
    torch.testing.assert_close(default, three, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, default, rtol=0, atol=0)
    assert batches == ["three_pass_velocity"] * 12 + ["two_pass_velocity"] * 12
    assert not torch.allclose(three, torch.zeros_like(three))
