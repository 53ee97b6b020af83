"""End-to-end generation on CPU with the tiny presets: files that play, seeds, weights folders, errors."""

import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from components.generate import GenerateOptions, build_pipeline, generate
from components.generate.generate import tiny_text_encoder_dirs
from common.video_io import probe_video, read_video
from models.aspect import inference_size
from pipelines.cli import main as cli_main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SORAFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "soraflow-cache"))


def _opts(tmp_path, **kw):
    base = dict(prompts=["a red kite over a beach"], model="tiny", random_init=True, num_frames=9, height=64,
                width=64, steps=3, out=str(tmp_path / "out.mp4"), progress=False)
    base.update(kw)
    return GenerateOptions(**base)


def test_tiny_generate_writes_a_playable_video(tmp_path):
    result = generate(_opts(tmp_path))
    path = result.paths[0]
    info = probe_video(path, count_frames=True)
    assert (info.num_frames, info.height, info.width, info.codec) == (9, 64, 64, "h264")
    assert info.fps == pytest.approx(24)
    frames, _ = read_video(path)
    assert frames.shape == (9, 64, 64, 3) and frames.std() > 1  # not a blank video
    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "9"
    assert set(result.seconds) >= {"load", "text", "dit", "vae_decode", "write"}


def test_same_seed_same_video_other_seed_other_video(tmp_path):
    a = read_video(generate(_opts(tmp_path, out=str(tmp_path / "a.mp4"), seed=1)).paths[0])[0]
    b = read_video(generate(_opts(tmp_path, out=str(tmp_path / "b.mp4"), seed=1)).paths[0])[0]
    c = read_video(generate(_opts(tmp_path, out=str(tmp_path / "c.mp4"), seed=2)).paths[0])[0]
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_generate_equals_the_parts_run_by_hand(tmp_path):
    """generate() = caption suffix -> T5/CLIP -> sampler -> AE decode, nothing else in between."""
    from models.flow.sampler import inference_latent_shape, sample
    from models.text import inference_caption

    opts = _opts(tmp_path, dtype="fp32")
    pipe = build_pipeline(opts, torch.device("cpu"), torch.float32)
    frames = read_video(generate(opts, pipeline=pipe).paths[0])[0].astype(np.float32)
    text = pipe.text.encode([inference_caption(opts.prompts[0], fps=24, motion_score=4)])
    shape = inference_latent_shape(1, 9, 64, 64, latent_channels=16, time_compression=4, spatial_compression=8,
                                   is_causal=True, patch_size=2)
    with torch.no_grad():
        lat = sample(pipe.dit, text=text, null_text=pipe.text.null(), latent_shape=shape, steps=3, seed=opts.seed,
                     dtype=torch.float32)
        video = pipe.ae.decode(lat)[0]
    expect = ((video.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).numpy()
    # H.264 at crf 18 on random-weight output: compare means per frame, not pixels.
    assert np.abs(frames.mean(axis=(1, 2, 3)) - expect.mean(axis=(1, 2, 3))).max() < 3


def test_i2v_with_reference_image_and_hc_preset(tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)).save(ref)
    r = generate(_opts(tmp_path, cond_type="i2v_head", ref_image=str(ref)))
    assert probe_video(r.paths[0], count_frames=True).num_frames == 9
    hc = generate(_opts(tmp_path, model="tiny-hc", num_frames=8, out=str(tmp_path / "hc.mp4")))
    info = probe_video(hc.paths[0], count_frames=True)
    assert (info.num_frames, info.height, info.width) == (8, 64, 64)


def test_loads_a_weights_folder_laid_out_like_ckpts(tmp_path):
    opts = _opts(tmp_path, seed=5, dtype="fp32")
    pipe = build_pipeline(opts, torch.device("cpu"), torch.float32)
    weights = tmp_path / "ckpts"
    weights.mkdir()
    save_file(pipe.dit.state_dict(), str(weights / "dit.safetensors"))
    save_file(pipe.ae.official_state_dict(), str(weights / "vae.safetensors"))
    t5, clip = tiny_text_encoder_dirs()
    shutil.copytree(t5, weights / "google" / "t5-v1_1-xxl")
    shutil.copytree(clip, weights / "openai" / "clip-vit-large-patch14")
    a = read_video(generate(opts, pipeline=pipe).paths[0])[0]
    b = read_video(generate(_opts(tmp_path, seed=5, dtype="fp32", random_init=False, weights_dir=str(weights),
                                  out=str(tmp_path / "b.mp4"))).paths[0])[0]
    assert np.array_equal(a, b)


def test_bad_requests_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(_opts(tmp_path, num_frames=10))
    with pytest.raises(FileNotFoundError, match="DiT weights not found: .*dit.safetensors"):
        generate(_opts(tmp_path, random_init=False, weights_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="needs a reference image"):
        generate(_opts(tmp_path, cond_type="i2v_head"))
    rc = cli_main(["generate", "--model", "tiny", "--prompt", "x", "--weights-dir", str(tmp_path / "none")])
    assert rc == 2 and "DiT weights not found" in capsys.readouterr().err


def test_inference_sizes_match_the_spec_table():
    assert inference_size("256px", "16:9") == (192, 336)
    assert inference_size("256px", "2.39:1") == (160, 384)
    assert inference_size("256px", "2:1") == (176, 352)
    assert inference_size("256px", "3:2") == (208, 304)
    assert inference_size("256px", "1:1") == (256, 256)
    assert inference_size("768px", "16:9") == (576, 1024)
    assert inference_size("768px", "4:3") == (656, 880)
    assert inference_size("768px", "9:16") == (1024, 576)
    with pytest.raises(ValueError, match="width:height"):
        inference_size("256px", "wide")
