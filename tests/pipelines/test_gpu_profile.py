"""The one-GPU profile (`soraflow run --profile gpu`) resolves and validates on CPU, and the training figures it
reports (MFU, tokens/s, the loader's and encoders' shares of the step) are computed right."""

from __future__ import annotations

import math

import pytest
import torch

from soraflow.components.eval.learning import learning_checks
from soraflow.components.eval.pipeline_step import PRESET_BY_DIT_CONFIG, psnr_targets
from soraflow.cli.main import build_parser
from soraflow.pipelines.dag import GPU_RECIPES, TINY_RECIPES
from soraflow.pipelines.local_run import PROFILES, validate_run
from soraflow.training.config import ConfigError, resolve
from soraflow.training.goodput import mfu, step_time_breakdown
from soraflow.training.recipes import PSNR_TARGETS, get_recipe


def test_gpu_profile_names_a_recipe_for_every_step_and_each_validates():
    recipes = PROFILES["gpu"]["recipes"]
    assert set(recipes) == set(TINY_RECIPES) and recipes == GPU_RECIPES
    validate_run(recipes, {})  # raises ConfigError listing every problem
    for step, name in recipes.items():
        cfg = resolve(name)
        assert cfg.stage == step
        assert cfg.parallel.param_dtype == "bf16"  # GPU recipes compute in bf16, unlike the tiny fp32 ones
        assert cfg.heldout.export_init  # the eval compares every trained model with its step-0 network
    # DiT stages 1-3 are scored on one held-out view, so the hand-off check (stage N start = N-1 end) holds
    views = {(resolve(recipes[s]).heldout.num_frames, resolve(recipes[s]).heldout.height,
              resolve(recipes[s]).heldout.width) for s in ("dit_stage1", "dit_stage2", "dit_stage3")}
    assert views == {(33, 128, 256)}
    # the eval samples at that view, and the DiT configs have generation presets
    ev = PROFILES["gpu"]["eval"]
    assert (ev["eval_num_frames"], ev["eval_height"], ev["eval_width"]) == (33, 128, 256)
    for s in ("dit_stage1", "distill"):
        assert resolve(recipes[s]).model.config in PRESET_BY_DIT_CONFIG


def test_gpu_profile_overrides_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="dit_stage1.*optim.lrr"):
        validate_run(PROFILES["gpu"]["recipes"], {"dit_stage1": {"optim.lrr": 1e-4}})


def test_cli_takes_the_gpu_profile_and_refuses_others():
    args = build_parser().parse_args(["run", "--profile", "gpu", "--out-dir", "x"])
    assert args.profile == "gpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--profile", "tpu"])


def _params(module_factory) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in module_factory().parameters())


def test_gpu_models_are_the_sizes_the_docs_state():
    from soraflow.models.dc_ae import DCAEConfig, VideoDCAE
    from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
    from soraflow.models.mmdit import MMDiT, get_config

    c = get_config("gpu-demo")
    # per double block: 2 streams x (qkv 3d^2 + proj d^2 + MLP 8d^2 + modulation 6d^2) + biases/norms;
    # per single block: linear1 d x 7d, linear2 5d x d, modulation 3d^2
    d = c.hidden_size
    blocks = c.depth * 2 * 18 * d * d + c.depth_single_blocks * 15 * d * d
    n = _params(lambda: MMDiT(c))
    assert blocks < n < blocks * 1.02
    assert 300e6 < n < 400e6
    assert get_config("gpu-demo-hc").in_channels == DCAEConfig().latent_channels  # patch 1 on DC-AE latents
    assert 55e6 < _params(lambda: HunyuanVideoVAE(HunyuanVAEConfig.named("hunyuan-vae-half"))) < 70e6
    cfg = get_recipe("gpu-demo-vae")
    assert not cfg.ae.tiny and DCAEConfig().width_list[-1] == 1024  # the full-width DC-AE


def test_psnr_targets_follow_the_recipe_that_trained_the_autoencoder():
    stages = {"hunyuan_vae_train": {"recipe": "gpu-demo-hunyuan-vae"}, "vae_train": {"recipe": "gpu-demo-vae"}}
    assert psnr_targets(stages) == {"hunyuan_vae": 28.0, "dcae": 24.0} == {
        "hunyuan_vae": PSNR_TARGETS["gpu-demo-hunyuan-vae"], "dcae": PSNR_TARGETS["gpu-demo-vae"]}
    # the CPU demo's recipes (and weights given as hunyuan_vae=PATH, which have no stage metrics) keep the defaults
    assert psnr_targets({"hunyuan_vae_train": {"recipe": "tiny-cpu-hunyuan-vae"}, "vae_train": None}) == {}
    ae = {"hunyuan_vae": {"trained": 26.0, "init": 10.0}, "dcae": {"trained": 25.0, "init": 12.0}}
    checks = {c["check"]: c for c in learning_checks(ae=ae, stages={}, fd={}, ae_psnr_min=psnr_targets(stages))}
    assert not checks["hunyuan_vae.heldout_psnr"]["passed"]  # 26 dB misses the GPU bar (28), passes the CPU one
    assert checks["hunyuan_vae.heldout_psnr"]["threshold"] == ">= 28 dB"
    assert checks["dcae.heldout_psnr"]["passed"] and checks["hunyuan_vae.beats_init"]["passed"]
    cpu = {c["check"]: c for c in learning_checks(ae=ae, stages={}, fd={})}
    assert cpu["hunyuan_vae.heldout_psnr"]["passed"]


def _step(step, seconds, wait, *, flops=None, tokens=0, **parts):
    ev = {"ev": "step", "t": float(step), "step": step, "seconds": seconds,
          "timing": {"data_wait_s": wait, **parts}}
    if flops is not None:
        ev["flops"] = flops
    if tokens:
        ev["tokens"] = tokens
    return ev


def test_step_time_breakdown_against_hand_computed_shares():
    events = [_step(1, 9.0, 5.0, flops=1e12, tokens=100)]  # warm-up step: left out (skip_first=1)
    events += [_step(s, 1.0, 0.25, flops=2e12, tokens=1000, decode_s=0.5, resize_s=0.125, ae_encode_s=0.4,
                     text_encode_s=0.1) for s in (2, 3, 4, 5)]
    events.append({"ev": "badput", "t": 6.0, "kind": "data_loading", "seconds": 3.0})  # not a step: ignored
    out = step_time_breakdown(events, skip_first=1)
    assert out["steps"] == 4 and out["first_step_counted"] == 2
    loop = 4 * (1.0 + 0.25)
    assert out["loop_seconds"] == pytest.approx(loop)
    assert out["data_wait_share"] == pytest.approx(4 * 0.25 / loop)  # 0.2
    assert out["ae_encode_share"] == pytest.approx(4 * 0.4 / loop)
    assert out["text_encode_share"] == pytest.approx(4 * 0.1 / loop)
    assert out["decode_worker_seconds_per_step"] == pytest.approx(0.5)
    assert out["resize_worker_load"] == pytest.approx(4 * 0.125 / loop)
    assert out["tokens_per_second"] == pytest.approx(4000 / 4.0)
    assert out["flops_per_second"] == pytest.approx(2e12)
    assert mfu(out["flops_per_second"], 1e13) == pytest.approx(0.2)
    assert mfu(out["flops_per_second"], 1e13, num_devices=2) == pytest.approx(0.1)
    assert mfu(None, 1e13) is None
    # a step repeated after a restart counts once (its last record)
    again = step_time_breakdown(events + [_step(5, 3.0, 0.0, flops=2e12, tokens=1000)], skip_first=1)
    assert again["compute_seconds"] == pytest.approx(3 * 1.0 + 3.0)
    assert step_time_breakdown([], skip_first=1) == {"steps": 0}
    # a run shorter than 5 x skip_first keeps four fifths of its steps at least
    assert step_time_breakdown(events[:3], skip_first=5)["steps"] == 3


def test_dit_mfu_uses_the_documented_formula_on_a_small_config():
    """A hand count for a small MMDiT: per block 2·N·(4 + 2·mlp_ratio)·d² + 4·N²·d forward, x3 for training;
    and the formula agrees with torch's FLOP counter on the real forward (the rest is embedders/final layer)."""
    from torch.utils.flop_counter import FlopCounterMode

    from soraflow.models.mmdit import MMDiT, get_config, mmdit_forward_flops
    from soraflow.models.packing import image_position_ids, text_position_ids

    c = get_config("tiny").with_overrides(hidden_size=128, num_heads=4, axes_dim=(8, 12, 12), depth=2,
                                          depth_single_blocks=3, cond_embed=False)
    n_img, n_txt, b, d = 256, 16, 2, 128
    n = n_img + n_txt
    linear = b * 5 * 2 * n * (4 + 2 * 4) * d * d  # qkv 3d^2 + proj d^2 + MLP 8d^2 per token and block
    attention = b * 5 * 4 * n * n * d  # QK^T and PV: 2·N²·d each
    hand = linear + attention
    assert mmdit_forward_flops(c, n_img, n_txt, b) == hand
    torch.manual_seed(0)
    model = MMDiT(c).eval()
    kw = dict(img=torch.randn(b, n_img, c.in_channels), img_ids=image_position_ids(b, 1, 32, 32, 2),
              txt=torch.randn(b, n_txt, c.context_in_dim), txt_ids=text_position_ids(b, n_txt),
              timesteps=torch.rand(b), y_vec=torch.randn(b, c.vec_in_dim))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kw)
    measured = counter.get_total_flops()
    # torch's counter sees every matmul; the fused CPU attention kernel it does not count, so it measures the
    # formula's linear part plus the embedders and final layer (which the formula leaves out: < 3% here)
    assert linear <= measured <= 1.03 * linear
    # MFU of a step of that shape that took 1 ms on a device of 1 TFLOP/s peak
    assert mfu(3 * hand / 1e-3, 1e12) == pytest.approx(3 * hand / 1e9)


def test_autoencoder_flops_are_counted_per_multiply_add():
    """The AE stages' FLOPs come from torch's FLOP counter: a 3x3x3 convolution is 2·Cin·27 per output element."""
    from soraflow.training.stages import measured_forward_flops

    conv = torch.nn.Conv3d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 5, 6, 7)
    state = torch.get_rng_state()
    assert measured_forward_flops(conv, x) == 2 * (2 * 8 * 5 * 6 * 7) * 4 * 27
    assert torch.equal(torch.get_rng_state(), state)  # counting leaves the training RNG alone


def test_loader_items_carry_their_decode_and_resize_seconds(tmp_path):
    from soraflow.training.data.dataset import VideoTextDataset
    from soraflow.training.data.fixtures import make_video_table
    from soraflow.training.data.loader import collate_skip
    from soraflow.training.trainer import _loader_timing

    table = make_video_table(tmp_path, [{"num_frames": 12, "height": 48, "width": 64, "fps": 24}] * 2)
    ds = VideoTextDataset(table)
    items = [ds["0-8-32-32"], ds["1-8-32-32"]]
    for it in items:
        assert it["timing"]["decode_s"] > 0 and it["timing"]["resize_s"] > 0
    batch = collate_skip(items)
    t = _loader_timing(batch, 0.5)
    assert t["data_wait_s"] == 0.5
    assert t["decode_s"] == pytest.approx(sum(i["timing"]["decode_s"] for i in items))
    assert t["resize_s"] == pytest.approx(sum(i["timing"]["resize_s"] for i in items))
    assert math.isfinite(t["resize_s"])


def test_the_eval_finds_the_gpu_autoencoders_and_text_encoders(tmp_path):
    """The eval rebuilds each autoencoder from its export's metadata, and the GPU presets pair full-size
    autoencoders with the tiny text encoders (nothing is downloaded on the GPU machine)."""
    from safetensors.torch import save_file

    from soraflow.inference.generate import PIPELINES
    from soraflow.models.hunyuan_vae.config import HunyuanVAEConfig, config_for_weights

    path = tmp_path / "vae.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"config": "hunyuan-vae-half"})
    assert config_for_weights(path, tiny=False) == HunyuanVAEConfig.named("hunyuan-vae-half")
    assert config_for_weights(path, tiny=False).block_out_channels == (64, 128, 256, 256)
    for name, kind in (("gpu-demo", "hunyuan"), ("gpu-demo-hc", "dcae")):
        preset = PIPELINES[name]
        assert preset.autoencoder == kind and not preset.tiny and preset.text_is_tiny
        assert PRESET_BY_DIT_CONFIG[preset.dit_config] == name
    assert PIPELINES["tiny"].text_is_tiny and not PIPELINES["opensora2"].text_is_tiny


def test_run_takes_given_hunyuan_vae_weights_and_refuses_a_missing_file(tmp_path, capsys):
    from soraflow.cli.main import main

    args = build_parser().parse_args(["run", "--profile", "gpu", "--hunyuan-vae", "w.safetensors"])
    assert args.hunyuan_vae == "w.safetensors"
    out = tmp_path / "run"
    assert main(["run", "--profile", "gpu", "--out-dir", str(out), "--hunyuan-vae",
                 str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors is not a file" in capsys.readouterr().err
    assert not out.exists()  # refused before any step (or the sample data) ran
