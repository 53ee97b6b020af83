"""Did-it-learn checks: the held-out evaluation passes a model that learned and fails one that did not (its own
initialisation passed as the trained model); the FVD-like proxy; the split; the latent standardisation fold;
the report's images load in headless Chromium."""

import copy
import os

import numpy as np
import pandas as pd
import pytest
import torch

from soraflow.components.eval.learning import fd_proxy, format_checks, gates_passed, learning_checks, video_features
from soraflow.components.sample_data import pan, zoom


@pytest.fixture(autouse=True)
def _cache(isolated_soraflow_cache):
    pass


def _curve(start, end, steps=10):
    return {"heldout": [{"step": 0, "fm_loss_mean": start}, {"step": steps, "fm_loss_mean": end}], "losses": []}


def _stages(s1, s2, s3, d):
    return {"dit_stage1": _curve(*s1), "dit_stage2": _curve(*s2), "dit_stage3": _curve(*s3), "distill": _curve(*d)}


def _by_name(checks):
    return {c["check"]: c for c in checks}


def test_checks_pass_a_chain_that_learned_and_fail_one_that_did_not():
    ae = {"hunyuan_vae": {"trained": 24.0, "init": 10.0}, "dcae": {"trained": 19.0, "init": 11.0}}
    fd = {"stage3": {"trained": 3.0, "init": 40.0}, "distilled": {"trained": 5.0, "init": 30.0}}
    good = learning_checks(ae=ae, stages=_stages((2.0, 1.0), (1.0, 0.8), (0.8, 0.7), (3.0, 1.5)), fd=fd,
                           handoff_weights={"equal": True, "n_tensors": 30})
    assert all(c["passed"] for c in good) and gates_passed(good), format_checks(good)
    # the initialisation passed as the trained model: nothing moved
    same_ae = {"hunyuan_vae": {"trained": 10.0, "init": 10.0}, "dcae": {"trained": 11.0, "init": 11.0}}
    same_fd = {"stage3": {"trained": 40.0, "init": 40.0}, "distilled": {"trained": 30.0, "init": 30.0}}
    bad = _by_name(learning_checks(ae=same_ae, stages=_stages((2.0, 2.0), (2.0, 2.0), (2.0, 2.0), (3.0, 3.0)),
                                   fd=same_fd))
    assert not gates_passed(list(bad.values()))
    for name in ("hunyuan_vae.heldout_psnr", "hunyuan_vae.beats_init", "dcae.heldout_psnr",
                 "dcae.heldout_psnr_gain", "dit_stage1.heldout_fm_loss", "dit_stage3.vs_random_init",
                 "distill.heldout_fm_loss", "stage3.fd_proxy", "distilled.fd_proxy"):
        assert not bad[name]["passed"], name
    # a broken hand-off (stage 2 did not start where stage 1 ended) is caught even when both stages improved
    broken = _by_name(learning_checks(ae=ae, stages=_stages((2.0, 1.0), (1.9, 1.0), (1.0, 0.7), (3.0, 1.5)),
                                      fd=fd))
    assert not broken["dit_stage2.handoff"]["passed"] and broken["dit_stage3.handoff"]["passed"]
    assert not gates_passed(list(broken.values()))
    # an autoencoder short of its absolute PSNR target but better than its init fails no gate
    short = learning_checks(
        ae={"hunyuan_vae": {"trained": 15.0, "init": 10.0}, "dcae": {"trained": 13.0, "init": 11.0}},
                            stages=_stages((2.0, 1.0), (1.0, 0.8), (0.8, 0.7), (3.0, 1.5)), fd=fd,
                            handoff_weights={"equal": True, "n_tensors": 30})
    assert gates_passed(short) and not _by_name(short)["hunyuan_vae.heldout_psnr"]["passed"]
    assert "FAIL" in format_checks(list(broken.values()))


def test_heldout_flow_matching_loss_fails_an_untrained_model():
    """The real held-out evaluation on a real clip: a tiny DiT fitted for a few steps beats its init; the
    init scored as "trained" fails the check."""
    from soraflow.models.hunyuan_vae import HunyuanVideoVAE
    from soraflow.models.mmdit import MMDiT, get_config
    from soraflow.models.text import TextConditioner
    from soraflow.models.text.tiny import tiny_text_encoder_dirs
    from soraflow.training.heldout import HeldoutClip, HeldoutLatents, fm_heldout_loss

    torch.manual_seed(0)
    ae = HunyuanVideoVAE.tiny().eval().requires_grad_(False)
    text = TextConditioner.from_pretrained(*tiny_text_encoder_dirs(), dtype=torch.float32, device="cpu")
    frames = pan("astronaut", 9, 2, 64, 64)
    lat = HeldoutLatents(ae, text, [HeldoutClip("pan", "an astronaut", frames)], "cpu", torch.float32)
    again = HeldoutLatents(ae, text, [HeldoutClip("pan", "an astronaut", frames)], "cpu", torch.float32)
    torch.manual_seed(1)
    init = MMDiT(get_config("tiny", cond_embed=False))
    start = fm_heldout_loss(init, lat)["fm_loss_mean"]
    assert fm_heldout_loss(init, again)["fm_loss_mean"] == start  # fixed noise and timesteps: reproducible
    trained = copy.deepcopy(init).train()
    opt = torch.optim.AdamW(trained.parameters(), lr=2e-3)
    from soraflow.models.flow import flow_matching_loss, noisy_latent, velocity_target
    from soraflow.models.packing import image_position_ids, pack, text_position_ids

    it = lat.items[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # fit the clip's velocity field at random t (not the grid's fixed draws)
        t = torch.rand(1, generator=g)
        noise = torch.randn(it["x0"].shape, generator=g)
        x_t = noisy_latent(it["x0"], noise, t)
        b, _, tl, h, w = x_t.shape
        pred = trained(img=pack(x_t, 2), img_ids=image_position_ids(b, tl, h, w, 2), txt=it["txt"],
                       txt_ids=text_position_ids(b, it["txt"].shape[1]), timesteps=t, y_vec=it["y_vec"])
        loss = flow_matching_loss(pred, pack(velocity_target(it["x0"], noise), 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fm_heldout_loss(trained, lat)["fm_loss_mean"]
    ae_ok = {"hunyuan_vae": {"trained": 30.0, "init": 10.0}, "dcae": {"trained": 30.0, "init": 10.0}}
    fd = {"stage3": {"trained": 1.0, "init": 2.0}, "distilled": {"trained": 1.0, "init": 2.0}}

    def stage1_passes(end_value):
        checks = _by_name(learning_checks(ae=ae_ok, stages={"dit_stage1": _curve(start, end_value)}, fd=fd))
        return checks["dit_stage1.heldout_fm_loss"]["passed"]

    assert end < 0.9 * start and stage1_passes(end)
    untrained = fm_heldout_loss(init, lat)["fm_loss_mean"]  # the initialisation passed as the trained model
    assert not stage1_passes(untrained)


def test_fd_proxy_ranks_samples_by_closeness_to_the_reference():
    refs = np.array([video_features(pan(n, 9, 2, 64, 64)) for n in ("astronaut", "coffee", "rocket", "chelsea")]
                    + [video_features(zoom(n, 9, 0.01, 64, 64)) for n in ("astronaut", "coffee", "rocket")])
    close = np.array([video_features(pan(n, 9, 3, 64, 64)) for n in ("astronaut", "coffee", "rocket", "chelsea")])
    rng = np.random.default_rng(0)
    noise = np.array([video_features(rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)) for _ in range(4)])
    assert fd_proxy(refs, close) < fd_proxy(refs, noise)
    assert fd_proxy(refs, refs) < 1e-3 * fd_proxy(refs, noise)


def test_split_holds_out_whole_sources(tmp_path):
    from soraflow.components.split import heldout_sources, split_dataset

    cur = tmp_path / "curated"
    cur.mkdir()
    rows = [{"path": f"clips/{s}_{k}.mp4", "source": f"/raw/{s}.mp4", "text": s, "num_frames": 72, "height": 144,
             "width": 256, "aspect_ratio": 0.5625, "resolution": 36864, "fps": 24.0}
            for s in ("train_a", "train_b", "heldout_c", "train_d") for k in range(2)]
    pd.DataFrame(rows).to_parquet(cur / "set_256px.parquet")
    pd.DataFrame(rows[:4]).to_parquet(cur / "set_768px.parquet")
    r = split_dataset(str(cur), str(tmp_path / "split"))
    held = pd.read_parquet(tmp_path / "split" / "heldout.parquet")
    train = pd.read_parquet(tmp_path / "split" / "set_256px.parquet")
    assert set(held.source) == {"/raw/heldout_c.mp4"} and len(held) == 2
    assert not set(train.source) & set(held.source) and len(train) == 6
    assert all(os.path.isabs(p) and p.startswith(str(cur)) for p in train.path)
    assert r.counts["train_set_768px"] == 4
    # without names: a fixed hash rule, never empty, stable
    srcs = [f"/x/v{i}.mp4" for i in range(40)]
    assert heldout_sources(srcs) == heldout_sources(list(reversed(srcs))) and 0 < len(heldout_sources(srcs)) < 40
    with pytest.raises(ValueError, match="one source video only"):
        pd.DataFrame(rows[:1]).to_parquet(cur / "set_256px.parquet")
        split_dataset(str(cur), str(tmp_path / "s2"))


def test_latent_standardisation_fold_is_exact():
    from soraflow.models.hunyuan_vae import HunyuanVideoVAE
    from soraflow.training.stages import fold_latent_standardisation

    torch.manual_seed(0)
    ae = HunyuanVideoVAE.tiny().eval()
    x = torch.from_numpy(pan("astronaut", 9, 2, 64, 64)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        before = ae.decode(ae.encode(x, sample=False))
        mean, _ = ae.encode_moments(x).chunk(2, dim=1)
        m, sd = mean.transpose(0, 1).flatten(1).mean(1), mean.transpose(0, 1).flatten(1).std(1)
        folded = copy.deepcopy(ae)
        fold_latent_standardisation(folded, m, sd)
        z = folded.encode(x, sample=False)
        after = folded.decode(z)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    per_channel = z.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(16), atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="needs Debian's chromium: sudo make test-deps")
def test_report_images_load_in_chromium_and_a_missing_one_is_caught(tmp_path):
    from soraflow.components.eval.browser import report_images
    from soraflow.components.eval.report import _gif_frames, curve_svg

    out = tmp_path / "r"
    _gif_frames(pan("astronaut", 4, 2, 32, 32), out / "thumbs" / "a.gif")
    (out / "plots").mkdir()
    (out / "plots" / "c.svg").write_text(curve_svg("loss", {"train": [(0, 2.0), (5, 1.0)]}))
    (out / "report.html").write_text("<html><body><img src='thumbs/a.gif'><img src='plots/c.svg'>"
                                     "<svg width='10' height='10'></svg></body></html>")
    doc = report_images(out / "report.html")
    assert len(doc["images"]) == 2 and doc["broken"] == [] and doc["inline_svgs"] == 1
    os.remove(out / "thumbs" / "a.gif")
    assert report_images(out / "report.html")["broken"] == ["thumbs/a.gif"]


def test_autoencoder_exports_say_what_they_are(tmp_path):
    """Loaders build the architecture an export names (`config`) and the DC-AE scaling factor it measured."""
    from safetensors.torch import save_file

    from soraflow.models.dc_ae import DCAEConfig, VideoDCAE
    from soraflow.models.hunyuan_vae import HunyuanVideoVAE
    from soraflow.models.hunyuan_vae.config import HunyuanVAEConfig, config_for_weights

    s4 = HunyuanVideoVAE(HunyuanVAEConfig.named("hunyuan-vae-tiny-s4"))
    path = tmp_path / "hy.safetensors"
    save_file({k: v.contiguous() for k, v in s4.official_state_dict().items()}, str(path),
              metadata={"config": "hunyuan-vae-tiny-s4"})
    assert config_for_weights(path, tiny=True).spatial_compression == 4
    assert HunyuanVideoVAE.from_pretrained(path, config=config_for_weights(path, True)).spatial_compression == 4
    assert config_for_weights(None, tiny=True).spatial_compression == 8  # no file: the tiny default
    dc = VideoDCAE.tiny()
    dpath = tmp_path / "dc.safetensors"
    save_file({k: v.contiguous() for k, v in dc.state_dict().items()}, str(dpath), metadata={"scaling_factor": "7.5"})
    assert DCAEConfig.for_weights(dpath, tiny=True).scaling_factor == 7.5
    with pytest.raises(ValueError, match="unknown HunyuanVideo VAE config"):
        HunyuanVAEConfig.named("nope")


def test_heldout_cache_shares_results_of_one_autoencoder_file_only(tmp_path):
    from soraflow.components.eval.heldout import HeldoutCache

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    calls = []

    def compute(tag):
        return lambda: calls.append(tag) or {"psnr": float(len(calls))}

    cache = HeldoutCache()
    first = cache.get("ae", str(a), ("clip0", 9, 64, 64, 0), compute("a0"))
    again = cache.get("ae", str(tmp_path / "." / "a.safetensors"), ("clip0", 9, 64, 64, 0), compute("a0 again"))
    assert again is first and calls == ["a0"] and cache.hits == 1
    cache.get("ae", str(a), ("clip0", 9, 64, 64, 1), compute("a1"))  # another clip index: another posterior seed
    cache.get("ae", str(b), ("clip0", 9, 64, 64, 0), compute("b0"))  # other weights
    cache.get("latents", str(a), ("clip0", 9, 64, 64, 0), compute("latents"))  # another kind of result
    cache.get("ae", None, ("clip0", 9, 64, 64, 0), compute("random"))  # no file: a seeded random AE
    cache.get("ae", None, ("clip0", 9, 64, 64, 0), compute("random"))
    assert calls == ["a0", "a1", "b0", "latents", "random", "random"]
