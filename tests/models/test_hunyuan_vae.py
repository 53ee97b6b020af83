"""HunyuanVideo VAE (docs/models.md#hunyuanvideo-vae): frame rules, latent scaling, causality, tiling, official key
map, loading."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from soraflow.models.autoencoder import VideoAutoencoder
from soraflow.models.hunyuan_vae import (
    CheckpointMismatch,
    HunyuanVAEConfig,
    HunyuanVideoVAE,
    TilingConfig,
    diffusers_to_official_key,
    official_state_dict_keys,
    official_state_dict_shapes,
    official_to_diffusers_key,
)

SCALE = 0.476986


@pytest.fixture(scope="module")
def vae() -> HunyuanVideoVAE:
    torch.manual_seed(0)
    model = HunyuanVideoVAE.tiny().eval().requires_grad_(False)
    # Non-trivial GroupNorm affine parameters, so that a wrong key mapping cannot go unnoticed.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, h, w, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- config / protocol
def test_protocol_and_attributes(vae):
    assert isinstance(vae, VideoAutoencoder)
    assert (vae.latent_channels, vae.time_compression, vae.spatial_compression) == (16, 4, 8)
    assert vae.is_causal is True
    assert vae.scaling_factor == SCALE


def test_full_config_matches_spec():
    c = HunyuanVAEConfig.full()
    assert c.block_out_channels == (128, 256, 512, 512)
    assert (c.layers_per_block, c.norm_num_groups, c.latent_channels) == (2, 32, 16)
    assert (c.scaling_factor, c.shift_factor) == (0.476986, 0.0)
    # strides (t, h, w): (1,2,2), (2,2,2), (2,2,2), none
    assert c.down_strides() == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]
    assert c.tiling.spatial is True and c.tiling.temporal is False  # the diffusion configs


def test_full_model_structure_on_meta():
    """The diffusers modules carry the structure of docs/models.md#hunyuanvideo-vae: GroupNorm(32, 1e-6), causal pads,
    strides, 1 head."""
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
        HunyuanVideoCausalConv3d,
        HunyuanVideoUpsampleCausal3D,
    )

    with torch.device("meta"):
        full = HunyuanVideoVAE()
    norms = [m for m in full.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)
    convs = [m for m in full.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    for m in convs:
        k = m.conv.kernel_size
        assert m.pad_mode == "replicate"
        assert m.time_causal_padding == (k[2] // 2, k[2] // 2, k[1] // 2, k[1] // 2, k[0] - 1, 0)
        assert m.conv.padding == (0, 0, 0)
    strides = [b.downsamplers[0].conv.conv.stride if b.downsamplers else None for b in full.encoder.down_blocks]
    assert strides == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]
    ups = [b.upsamplers[0].upsample_factor if b.upsamplers else None for b in full.decoder.up_blocks]
    assert ups == [(1, 2, 2), (2, 2, 2), (2, 2, 2), None]  # spec: spatial for i<3, temporal for i in {1,2}
    assert [len(b.resnets) for b in full.encoder.down_blocks] == [2] * 4
    assert [len(b.resnets) for b in full.decoder.up_blocks] == [3] * 4
    assert all(isinstance(b.upsamplers[0], HunyuanVideoUpsampleCausal3D) for b in full.decoder.up_blocks[:3])
    for mid in (full.encoder.mid_block, full.decoder.mid_block):
        (attn,) = mid.attentions
        assert attn.heads == 1 and attn.inner_dim == 512 and attn.group_norm.num_groups == 32
    assert full.encoder.conv_out.conv.out_channels == 32
    assert full.quant_conv.kernel_size == (1, 1, 1) and full.quant_conv.out_channels == 32
    assert full.post_quant_conv.kernel_size == (1, 1, 1) and full.post_quant_conv.in_channels == 16


def test_tiling_numbers_match_spec():
    p = TilingConfig().resolve(spatial_compression=8, time_compression=4)
    assert (p.enc_tile_px, p.enc_stride_px, p.enc_blend_lat, p.enc_keep_lat) == (256, 192, 8, 24)
    assert (p.dec_tile_lat, p.dec_stride_lat, p.dec_blend_px, p.dec_keep_px) == (32, 24, 64, 192)
    assert (p.enc_tile_frames, p.enc_stride_frames, p.enc_blend_latf, p.enc_keep_latf) == (64, 48, 4, 12)
    assert (p.dec_tile_latf, p.dec_stride_latf, p.dec_blend_frames, p.dec_keep_frames) == (16, 12, 16, 48)
    with pytest.raises(ValueError, match="does not tile evenly"):
        TilingConfig(tile_sample_size=40).resolve(8, 4)


# ----------------------------------------------------------------------------- frame rules and shapes
@pytest.mark.parametrize("t,t_lat", [(1, 1), (5, 2), (9, 3), (13, 4)])
def test_round_trip_shapes(vae, t, t_lat):
    x = _video(t, 16, 24)
    with torch.no_grad():
        z = vae.encode(x, generator=torch.Generator().manual_seed(0))
        assert z.shape == (1, 16, t_lat, 2, 3)
        y = vae.decode(z)
    assert y.shape == x.shape
    assert vae.latent_frames(t) == t_lat and vae.pixel_frames(t_lat) == t


def test_latent_frames_rule(vae):
    assert vae.latent_frames(129) == 33
    assert vae.latent_shape(129, 768, 1280) == (16, 33, 96, 160)
    for bad in (0, 2, 4, 8, 128):
        with pytest.raises(ValueError, match=r"4k\+1") as e:
            vae.latent_frames(bad)
        assert f"got {bad} frames" in str(e.value)


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match=r"4k\+1.*got 8 frames"):
        vae.encode(_video(8, 16, 16))
    with pytest.raises(ValueError, match=r"multiples of 8.*got 20x16"):
        vae.encode(_video(5, 20, 16))
    with pytest.raises(ValueError, match=r"3 channels.*\(1, 4, 5, 16, 16\)"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))
    with pytest.raises(ValueError, match=r"5-D video.*\(3, 5, 16, 16\)"):
        vae.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"16 latent channels.*\(1, 15, 2, 2, 2\)"):
        vae.decode(torch.zeros(1, 15, 2, 2, 2))
    with pytest.raises(ValueError, match=r"5-D latent.*\(16, 2, 2, 2\)"):
        vae.decode(torch.zeros(16, 2, 2, 2))


# ----------------------------------------------------------------------------- scaling exactly once
def test_encode_scales_posterior_once(vae):
    x = _video(9, 16, 16)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        z_mode = vae.encode(x, sample=False)
        z_s = vae.encode(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z_mode, SCALE * mean, rtol=0, atol=0)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    expected = SCALE * (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise)
    torch.testing.assert_close(z_s, expected, rtol=1e-6, atol=1e-6)
    assert z_mode.shape[1] == 16  # never the raw 32-channel encoder output (docs/models.md#hunyuanvideo-vae)


def test_sampling_is_seeded(vae):
    x = _video(5, 16, 16)
    with torch.no_grad():
        a = vae.encode(x, generator=torch.Generator().manual_seed(1))
        b = vae.encode(x, generator=torch.Generator().manual_seed(1))
        c = vae.encode(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_decode_unscales_once(vae):
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = vae.decode(z)
        ref = vae.decoder(vae.post_quant_conv(z / SCALE))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


def test_forward_is_decode_of_encode(vae):
    x = _video(5, 16, 16)
    with torch.no_grad():
        y = vae(x, sample=False)
        ref = vae.decode(vae.encode(x, sample=False))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


# ----------------------------------------------------------------------------- causality
def _strip_groupnorm(model: HunyuanVideoVAE) -> HunyuanVideoVAE:
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(m, name, nn.Identity())
    return model


def test_causal_structure(vae):
    """Convs (front T padding), strided downsampling and the frame-causal mid attention are causal: with the
    frame-mixing GroupNorm statistics removed, later frames never reach earlier latents (and vice versa)."""
    local = _strip_groupnorm(vae)
    x = _video(9, 16, 16)
    x2 = x.clone()
    x2[:, :, 5:] = _video(4, 16, 16, seed=1)  # latent k sees pixel frames <= 4k: latents 0, 1 fixed
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # latent 2 decodes to frames 5..8: frames 0..4 fixed
    with torch.no_grad():
        a, b = local.encode(x, sample=False), local.encode(x2, sample=False)
        ya, yb = local.decode(z), local.decode(z2)
    assert torch.equal(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])
    assert torch.equal(ya[:, :, :5], yb[:, :, :5])
    assert not torch.allclose(ya[:, :, 5:], yb[:, :, 5:])


def test_causal_mask_is_needed():
    """Control for the test above: the mid attention's mask is what keeps later frames out."""
    from diffusers.models.autoencoders import autoencoder_kl_hunyuan_video as mod

    torch.manual_seed(0)
    local = _strip_groupnorm(HunyuanVideoVAE.tiny())
    x = _video(9, 16, 16)
    x2 = x.clone()
    x2[:, :, 8:] = 0.0
    orig = mod.prepare_causal_attention_mask
    try:
        mod.prepare_causal_attention_mask = lambda t, hw, dtype, device, batch_size=None: torch.zeros(
            batch_size, t * hw, t * hw, dtype=dtype, device=device
        )
        with torch.no_grad():
            a, b = local.encode(x, sample=False), local.encode(x2, sample=False)
    finally:
        mod.prepare_causal_attention_mask = orig
    assert not torch.equal(a[:, :, 0], b[:, :, 0])


def test_groupnorm_mixes_frames_like_the_official_model(vae):
    """GroupNorm statistics span all frames (as in Open-Sora's module), so the full model is only causal in its
    convolutions and attention: the first latent of a video is not the latent of its first frame alone."""
    x = _video(9, 16, 16)
    x2 = x.clone()
    x2[:, :, 5:] = _video(4, 16, 16, seed=1)
    with torch.no_grad():
        a, b = vae.encode(x, sample=False), vae.encode(x2, sample=False)
    assert not torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-4)


# ----------------------------------------------------------------------------- tiling
class _LocalEncoder(nn.Module):
    """Stand-in encoder that is exactly local: latent (t, i, j) = linear(mean of pixel frame 4t, patch i, j)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(3, 32, 1)

    def forward(self, x):
        return self.proj(F.avg_pool3d(x[:, :, ::4], kernel_size=(1, 8, 8)))


class _LocalDecoder(nn.Module):
    """Stand-in causal decoder: frame 0 <- latent 0, frames 4k-3..4k <- latent k; 8x8 nearest upsampling."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(16, 3, 1)

    def forward(self, z):
        y = self.proj(z)
        y = torch.cat([y[:, :, :1], y[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        return F.interpolate(y, scale_factor=(1, 8, 8), mode="nearest")


def _with_local_parts(vae: HunyuanVideoVAE) -> HunyuanVideoVAE:
    m = copy.deepcopy(vae)
    torch.manual_seed(0)
    m.encoder, m.decoder = _LocalEncoder(), _LocalDecoder()
    return m


def test_tiling_reassembles_exactly_for_a_local_model(vae):
    """With an exactly local network, every overlapping tile sees the same values, so the linear blends must
    reproduce the untiled result: proves tile positions, blend weights (summing to 1) and keep lengths."""
    m = _with_local_parts(vae)
    x = _video(41, 112, 112)
    z = torch.randn(1, 16, 11, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.enable_tiling(spatial=False, temporal=False)
        ref_z, ref_y = m.encode(x, sample=False), m.decode(z)
        m.enable_tiling(spatial=True, temporal=True, tile_sample_size=64, tile_sample_frames=32, overlap=0.25)
        til_z, til_y = m.encode(x, sample=False), m.decode(z)
    assert til_z.shape == ref_z.shape == (1, 16, 11, 14, 14) and til_y.shape == ref_y.shape
    torch.testing.assert_close(til_z, ref_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(til_y, ref_y, rtol=1e-5, atol=1e-5)


def _diffusers_reference(vae: HunyuanVideoVAE, tile_px: int, tile_frames: int, overlap: float):
    from diffusers import AutoencoderKLHunyuanVideo

    ref = AutoencoderKLHunyuanVideo(**vae.config.diffusers_kwargs()).eval()
    ref.load_state_dict(vae.state_dict(), strict=True)
    ref.enable_tiling(
        tile_sample_min_height=tile_px,
        tile_sample_min_width=tile_px,
        tile_sample_min_num_frames=tile_frames,
        tile_sample_stride_height=int(tile_px * (1 - overlap)),
        tile_sample_stride_width=int(tile_px * (1 - overlap)),
        tile_sample_stride_num_frames=int(tile_frames * (1 - overlap)),
    )
    return ref


def test_spatial_tiling_matches_diffusers_tiled_path(vae):
    """Real (tiny) network: our spatial tiling equals diffusers' tiled_encode / tiled_decode run with the same
    tile numbers (Open-Sora's algorithm: stride (1-overlap)*tile, linear blend, keep stride)."""
    m = copy.deepcopy(vae)
    m.enable_tiling(spatial=True, temporal=False, tile_sample_size=64, overlap=0.25)
    ref = _diffusers_reference(m, 64, 64, 0.25)
    x = _video(5, 64, 112)
    z = torch.randn(1, 16, 2, 8, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = ref.tiled_encode(x).chunk(2, dim=1)[0]
        torch.testing.assert_close(m.encode(x, sample=False), SCALE * mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.decode(z), ref.tiled_decode(z / SCALE).sample, rtol=1e-5, atol=1e-6)
        # and tiling really changed something (tiles see different GroupNorm statistics)
        m.enable_tiling(spatial=False)
        assert not torch.allclose(m.encode(x, sample=False), SCALE * mean, atol=1e-3)


def test_temporal_tiling_matches_diffusers_tiled_path(vae):
    m = copy.deepcopy(vae)
    m.enable_tiling(spatial=False, temporal=True, tile_sample_frames=32, overlap=0.25)
    ref = _diffusers_reference(m, 256, 32, 0.25)
    x = _video(41, 16, 16)
    z = torch.randn(1, 16, 11, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = ref._temporal_tiled_encode(x).chunk(2, dim=1)[0]
        z_til = m.encode(x, sample=False)
        assert z_til.shape == (1, 16, 11, 2, 2)
        torch.testing.assert_close(z_til, SCALE * mean, rtol=1e-5, atol=1e-6)
        y = m.decode(z)
        assert y.shape == (1, 3, 41, 16, 16)
        torch.testing.assert_close(y, ref._temporal_tiled_decode(z / SCALE).sample, rtol=1e-5, atol=1e-6)


def test_tiling_does_not_trigger_below_tile_size(vae):
    m = copy.deepcopy(vae)
    x = _video(13, 32, 32)
    with torch.no_grad():
        a = m.encode(x, sample=False)
        m.enable_tiling(spatial=True, temporal=True, tile_sample_size=32, tile_sample_frames=8, overlap=0.5)
        b = m.encode(x, sample=False)  # 32x32 is not larger than the 32-px tile; 13 frames > 8 do tile
        m.enable_tiling(tile_sample_frames=16)
        c = m.encode(x, sample=False)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------- official key map
@pytest.mark.parametrize("which", ["full", "tiny"])
def test_key_map_is_a_bijection(which):
    config = HunyuanVAEConfig.full() if which == "full" else HunyuanVAEConfig.tiny()
    with torch.device("meta"):
        model = HunyuanVideoVAE(config)
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        ref = AutoencoderKLHunyuanVideo(**config.diffusers_kwargs())
    official = official_state_dict_shapes(config)
    mapped = {official_to_diffusers_key(k): v for k, v in official.items()}
    assert len(mapped) == len(official)  # injective
    for target in (model, ref):
        sd = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        assert mapped == sd  # onto, with the same shapes
    assert {diffusers_to_official_key(k) for k in mapped} == set(official)
    if which == "full":
        assert len(official) == 248
        assert sum(torch.Size(s).numel() for s in official.values()) == 246_478_803  # 493 MB in bf16
        for k in (
            "encoder.conv_in.conv.weight",
            "encoder.down_blocks.0.resnets.1.conv1.conv.weight",
            "encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight",
            "encoder.down_blocks.2.downsamplers.0.conv.conv.weight",
            "encoder.mid_block.attentions.0.group_norm.weight",
            "encoder.mid_block.attentions.0.to_q.weight",
            "encoder.mid_block.attentions.0.to_out.0.bias",
            "decoder.up_blocks.3.resnets.2.conv2.conv.bias",
            "decoder.up_blocks.2.upsamplers.0.conv.conv.weight",
            "quant_conv.weight",
            "post_quant_conv.bias",
        ):
            assert k in official, k
        assert "encoder.down_blocks.3.downsamplers.0.conv.conv.weight" not in official
        assert official["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
    assert official_state_dict_keys(config) == sorted(official)


# ----------------------------------------------------------------------------- loading
def _save_official(vae: HunyuanVideoVAE, path) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    sd = {diffusers_to_official_key(k): v.contiguous() for k, v in vae.state_dict().items()}
    assert set(sd) == set(official_state_dict_keys(vae.config))
    save_file(sd, str(path))
    return sd


def test_strict_load_of_official_names(vae, tmp_path):
    path = tmp_path / "hunyuan_vae.safetensors"
    _save_official(vae, path)
    x = _video(5, 16, 16)
    for where in (path, tmp_path):
        loaded = HunyuanVideoVAE.from_pretrained(where, device="cpu", dtype=torch.float32, config=vae.config)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        with torch.no_grad():
            assert torch.equal(loaded.encode(x, sample=False), vae.encode(x, sample=False))
            g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            assert torch.equal(loaded(x, generator=g1), vae(x, generator=g2))
    half = HunyuanVideoVAE.from_pretrained(path, dtype=torch.bfloat16, config=vae.config)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_load_errors(vae, tmp_path):
    from safetensors.torch import save_file

    missing = tmp_path / "nope" / "hunyuan_vae.safetensors"
    with pytest.raises(FileNotFoundError, match="nope"):
        HunyuanVideoVAE.from_pretrained(missing, config=vae.config)

    sd = {diffusers_to_official_key(k): v.contiguous() for k, v in vae.state_dict().items()}
    dropped = sorted(sd)[:7]
    for k in dropped:
        del sd[k]
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["quant_conv.bias"] = torch.zeros(5)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointMismatch) as e:
        HunyuanVideoVAE.from_pretrained(bad, config=vae.config)
    msg = str(e.value)
    assert "7 missing" in msg and dropped[0] in msg and ", ..." in msg
    assert "1 unexpected: encoder.extra.weight" in msg
    assert "quant_conv.bias (5,) (expected (32,))" in msg
    assert str(bad) in msg
    # a tiny checkpoint into the full model: every shape is named as wrong, not silently loaded
    good = tmp_path / "tiny.safetensors"
    _save_official(vae, good)
    with pytest.raises(CheckpointMismatch, match="with another shape"):
        HunyuanVideoVAE.from_pretrained(good)


@pytest.mark.slow
def test_full_size_model_runs_end_to_end():
    """The released architecture (246.5M parameters, random weights, ~1 GB fp32) on a tiny clip."""
    torch.manual_seed(0)
    full = HunyuanVideoVAE().eval()
    x = _video(5, 16, 16)
    with torch.no_grad():
        z = full.encode(x, generator=torch.Generator().manual_seed(0))
        y = full.decode(z)
    assert z.shape == (1, 16, 2, 2, 2) and y.shape == x.shape
    assert torch.isfinite(y).all()
