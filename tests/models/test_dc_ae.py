"""Video DC-AE (docs/models.md#video-dc-ae, #autoencoder-training): shortcuts, norms, attention, shapes, scaling,
tiling, keys, loading, losses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from soraflow.models.autoencoder import VideoAutoencoder
from soraflow.models.dc_ae import (
    ChannelDuplicatingPixelShuffle,
    DCAEConfig,
    LiteMLA,
    NLayerDiscriminator3D,
    PixelUnshuffleChannelAveraging,
    RMSNorm3d,
    VideoDCAE,
    adaptive_disc_weight,
    generator_loss,
    hinge_d_loss,
    reconstruction_nll,
    relu_linear_attention,
)
from soraflow.models.dc_ae.layers import ResidualBlock

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny() -> VideoDCAE:
    torch.manual_seed(0)
    return VideoDCAE.tiny().eval()


def _clone(model: VideoDCAE, **cfg) -> VideoDCAE:
    other = VideoDCAE(dataclasses.replace(model.config, **cfg)).eval()
    other.load_state_dict(model.state_dict())
    return other


# ---------------------------------------------------------------------------------------------------------
# parameter-free shortcuts
# ---------------------------------------------------------------------------------------------------------


def test_unshuffle_averaging_hand_computed_2d():
    # x[c, t, h, w] = 12c + 4t + 2h + w ; per-frame unshuffle -> channel c*4 + rh*2 + rw holds 12c + 4t + 2rh + rw;
    # averaging 8 -> 2 channels (groups of 4) -> 12c + 4t + 1.5
    x = torch.arange(24.0).reshape(1, 2, 3, 2, 2)
    out = PixelUnshuffleChannelAveraging(2, 2, 2, temporal=False)(x)
    expected = torch.tensor([[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]]).reshape(1, 2, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    # the temporal variant falls back to this when T == 1 (image mode)
    out_img = PixelUnshuffleChannelAveraging(2, 2, 2, temporal=True)(x[:, :, :1])
    torch.testing.assert_close(out_img, expected[:, :, :1])


def test_per_frame_unshuffle_uses_torch_channel_order():
    from soraflow.models.dc_ae.layers import pixel_shuffle_2d_per_frame, pixel_unshuffle_2d_per_frame

    x = torch.randn(2, 3, 4, 6, 8)
    ref = F.pixel_unshuffle(x.transpose(1, 2).contiguous(), 2).transpose(1, 2)
    assert torch.equal(pixel_unshuffle_2d_per_frame(x, 2), ref)
    assert torch.equal(pixel_shuffle_2d_per_frame(ref, 2), x)


def test_unshuffle_averaging_hand_computed_3d():
    # x[c, t, h, w] = 8c + 4t + 2h + w on a 2x2x2 block: the 3D unshuffle channel c*8 + rt*4 + rh*2 + rw holds
    # exactly its own index, so averaging 16 -> 4 channels gives the means of 0..3, 4..7, 8..11, 12..15.
    x = torch.arange(16.0).reshape(1, 2, 2, 2, 2)
    out = PixelUnshuffleChannelAveraging(2, 4, 2, temporal=True)(x)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.5, 5.5, 9.5, 13.5]))


def test_unshuffle_averaging_matches_direct_loops():
    torch.manual_seed(1)
    cin, cout, r = 3, 6, 2
    x = torch.randn(2, cin, 4, 4, 6)
    out = PixelUnshuffleChannelAveraging(cin, cout, r, temporal=True)(x)
    g = cin * r**3 // cout
    ref = torch.zeros(2, cout, 2, 2, 3)
    for b in range(2):
        for o in range(cout):
            for t in range(2):
                for h in range(2):
                    for w in range(3):
                        acc = 0.0
                        for k in range(o * g, (o + 1) * g):
                            c, rem = divmod(k, 8)
                            rt, rem = divmod(rem, 4)
                            rh, rw = divmod(rem, 2)
                            acc += x[b, c, 2 * t + rt, 2 * h + rh, 2 * w + rw].item()
                        ref[b, o, t, h, w] = acc / g
    torch.testing.assert_close(out, ref)


def test_duplicating_shuffle_hand_computed_and_right_inverse():
    # 2 -> 1 channel, 3D: repeat x4 -> [a,a,a,a,b,b,b,b]; shuffled channel index r_t*4 + r_h*2 + r_w, so the
    # output frame 2t + r_t takes a_t for r_t = 0 and b_t for r_t = 1: frames [a0, b0, a1, b1]
    x = torch.tensor([[3.0, 4.0], [7.0, 8.0]]).reshape(1, 2, 2, 1, 1)
    out = ChannelDuplicatingPixelShuffle(2, 1, 2, temporal=True)(x)
    assert out.shape == (1, 1, 4, 2, 2)
    for f, v in enumerate([3.0, 7.0, 4.0, 8.0]):
        assert torch.all(out[0, 0, f] == v)
    # image mode (T = 1): per-frame 2D shuffle, repeat x2 -> channel r_h*2 + r_w: rows [a, a], [b, b]
    out_img = ChannelDuplicatingPixelShuffle(2, 1, 2, temporal=True)(x[:, :, :1])
    torch.testing.assert_close(out_img[0, 0, 0], torch.tensor([[3.0, 3.0], [7.0, 7.0]]))
    # averaging after duplicating returns the input (3D, per-frame 2D, image fallback, factor-1 projections)
    torch.manual_seed(2)
    for cin, cout, r, temporal, t in [(16, 8, 2, True, 2), (16, 8, 2, False, 3), (16, 8, 2, True, 1), (4, 32, 1, False, 2)]:
        z = torch.randn(2, cin, t, 3, 5)
        up = ChannelDuplicatingPixelShuffle(cin, cout, r, temporal)(z)
        down = PixelUnshuffleChannelAveraging(cout, cin, r, temporal)(up)
        torch.testing.assert_close(down, z)


# ---------------------------------------------------------------------------------------------------------
# norm / attention
# ---------------------------------------------------------------------------------------------------------


def test_rmsnorm3d_formula():
    torch.manual_seed(3)
    norm = RMSNorm3d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 3, 4, 5)
    xd = x.double()
    ref = xd / torch.sqrt((xd**2).mean(dim=1, keepdim=True) + 1e-5)
    ref = ref * norm.weight.double().view(1, -1, 1, 1, 1) + norm.bias.double().view(1, -1, 1, 1, 1)
    torch.testing.assert_close(norm(x).double(), ref, atol=1e-5, rtol=1e-5)
    # bf16 module and input: statistics in fp32, result in bf16 and close to the fp64 formula
    yb = norm.bfloat16()(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.double(), ref, atol=0.05, rtol=0.02)


def _quadratic_relu_attention(qkv: torch.Tensor, d: int, eps: float = 1e-15) -> torch.Tensor:
    b, c, t, h, w = qkv.shape
    q3 = qkv.double().reshape(b, c // (3 * d), 3 * d, t * h * w)
    out = torch.zeros(b, c // (3 * d), d, t * h * w, dtype=torch.float64)
    for bi in range(b):
        for hd in range(q3.shape[1]):
            q = F.relu(q3[bi, hd, :d])
            k = F.relu(q3[bi, hd, d : 2 * d])
            v = q3[bi, hd, 2 * d :]
            att = q.T @ k  # att[n, m] = <relu q_n, relu k_m>
            out[bi, hd] = (v @ att.T) / (att.sum(dim=1) + eps)
    return out.reshape(b, -1, t, h, w)


def test_lite_mla_matches_quadratic_attention():
    torch.manual_seed(4)
    d = 4
    mla = LiteMLA(8, head_dim=d, scales=(5,))
    x = torch.randn(2, 8, 2, 3, 3)
    qkv = torch.randn(2, 3 * 8, 2, 3, 3)
    torch.testing.assert_close(relu_linear_attention(qkv, d).double(), _quadratic_relu_attention(qkv, d),
                               atol=1e-5, rtol=1e-4)
    # whole module: proj(attention(cat(qkv, aggreg(qkv)))) with heads of 3*d consecutive channels
    with torch.no_grad():
        raw = mla.qkv(x)
        ms = torch.cat([raw, mla.aggreg[0](raw)], dim=1)
        assert ms.shape[1] == 6 * 8
        ref = mla.proj(_quadratic_relu_attention(ms, d).float())
        torch.testing.assert_close(mla(x), ref, atol=1e-5, rtol=1e-4)
    # layer shapes of the multi-scale branch: depthwise 5x5x5, then grouped 1x1 with groups 3*heads
    assert mla.aggreg[0][0].weight.shape == (24, 1, 5, 5, 5)
    assert mla.aggreg[0][1].weight.shape == (24, d, 1, 1, 1) and mla.aggreg[0][1].groups == 3 * (8 // d)


# ---------------------------------------------------------------------------------------------------------
# end-to-end behaviour on the tiny model
# ---------------------------------------------------------------------------------------------------------


def test_protocol_and_attributes(tiny):
    assert isinstance(tiny, VideoAutoencoder)
    assert (tiny.time_compression, tiny.spatial_compression, tiny.is_causal) == (4, 32, False)
    with torch.device("meta"):
        full = VideoDCAE()
    assert (full.latent_channels, full.time_compression, full.spatial_compression) == (128, 4, 32)
    assert full.scaling_factor == 0.493 and DCAEConfig(scaling_factor=None).scaling_factor is None
    assert tiny.latent_frames(32) == 8 and tiny.latent_frames(1) == 1 and tiny.latent_frames(128) == 32


def test_shapes_video_and_image(tiny):
    x = torch.rand(1, 3, 32, 64, 64) * 2 - 1
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, 8, 8, 2, 2)
        assert tiny.decode(z).shape == x.shape
        img = x[:, :, :1]
        zi = tiny.encode(img)
        assert zi.shape == (1, 8, 1, 2, 2)
        assert tiny.decode(zi).shape == img.shape


def test_full_config_shapes_on_meta():
    with torch.device("meta"):
        full = VideoDCAE()
        z = full.encode(torch.empty(1, 3, 32, 256, 256))
        assert z.shape == (1, 128, 8, 8, 8)
        assert full.decode(z).shape == (1, 3, 32, 256, 256)
        assert full.encode(torch.empty(1, 3, 1, 256, 256)).shape == (1, 128, 1, 8, 8)


def test_scaling_applied_exactly_once(tiny):
    torch.manual_seed(5)
    x = torch.rand(2, 3, 8, 64, 64) * 2 - 1
    z_raw = torch.randn(2, 8, 2, 2, 2)
    sf = tiny.config.scaling_factor
    assert sf == 0.493
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode(x), tiny.encoder(x) / sf, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(tiny.decode(z_raw), tiny.decoder(z_raw * sf), atol=1e-6, rtol=1e-5)
        unscaled = _clone(tiny, scaling_factor=None)
        torch.testing.assert_close(unscaled.encode(x), tiny.encoder(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(unscaled.decode(z_raw), tiny.decoder(z_raw), atol=1e-6, rtol=1e-5)


def test_non_causal_latents_depend_on_future_frames(tiny):
    torch.manual_seed(6)
    x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
    y = x.clone()
    y[:, :, 4:] = torch.rand_like(y[:, :, 4:]) * 2 - 1  # change only frames 4..7 (latent frame 1)
    with torch.no_grad():
        za, zb = tiny.encode(x), tiny.encode(y)
    # latent frame 0 covers frames 0..3, yet it changes: the DC-AE looks ahead (Hunyuan's causal VAE would not)
    assert (za[:, :, 0] - zb[:, :, 0]).abs().max() > 1e-4
    # and decoding: pixel frame 0 depends on latent frame 1
    zc = za.clone()
    zc[:, :, 1] += 1.0
    with torch.no_grad():
        assert (tiny.decode(za)[:, :, 0] - tiny.decode(zc)[:, :, 0]).abs().max() > 1e-5


# ---------------------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------------------


def test_tiling_bookkeeping_exact_with_local_stand_in(tiny):
    """With a purely local stand-in for the per-tile AE, tiles, blend weights and crops must reassemble the
    untiled result exactly (tolerance 1e-6): proves tile offsets/strides/keep sizes and that blend weights sum
    to one."""
    model = _clone(tiny)
    model._encode_tile = lambda x: F.avg_pool3d(x, (4, 32, 32)).repeat(1, 3, 1, 1, 1)[:, :8]
    model._decode_tile = lambda z: z[:, :3].repeat_interleave(4, 2).repeat_interleave(32, 3).repeat_interleave(32, 4)
    plain = _clone(model, use_spatial_tiling=False, use_temporal_tiling=False)
    plain._encode_tile, plain._decode_tile = model._encode_tile, model._decode_tile
    torch.manual_seed(7)
    # tiny tiles: spatial 128 px (4 latents) stride 96, temporal 16 frames (4 latents) stride 12
    x = torch.randn(2, 3, 40, 224, 160)
    z = model.encode(x)
    assert z.shape == (2, 8, 10, 7, 5)
    torch.testing.assert_close(z, plain.encode(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.decode(z), plain.decode(z), atol=1e-6, rtol=1e-6)


def test_temporal_tiled_decode_keeps_every_frame(tiny):
    # tiny temporal tile = 4 latents, stride 3: 7 latents -> starts 0, 3, 6; the last would hold 1 latent
    z = torch.randn(1, 8, 7, 1, 1)
    with torch.no_grad():
        assert tiny.decode(z).shape == (1, 3, 28, 32, 32)
        assert tiny.decode(z[:, :, :1]).shape == (1, 3, 1, 32, 32)  # a lone latent frame is an image


def _reference_tiled_encode_spatial(model: VideoDCAE, x: torch.Tensor) -> torch.Tensor:
    """Literal transcription of the upstream algorithm (in-place blend loops), used as an independent check."""
    tile, ov = model.config.spatial_tile_size, model.config.tile_overlap_factor
    lat = tile // 32
    net, blend = int(tile * (1 - ov)), int(lat * ov)
    limit = lat - blend
    rows = [[model.encoder(x[:, :, :, i : i + tile, j : j + tile]) for j in range(0, x.shape[-1], net)]
            for i in range(0, x.shape[-2], net)]
    out_rows = []
    for i, row in enumerate(rows):
        out = []
        for j, t in enumerate(row):
            if i > 0:
                a = rows[i - 1][j]
                e = min(a.shape[-2], t.shape[-2], blend)
                for y in range(e):
                    t[:, :, :, y, :] = a[:, :, :, -e + y, :] * (1 - y / e) + t[:, :, :, y, :] * (y / e)
            if j > 0:
                a = row[j - 1]
                e = min(a.shape[-1], t.shape[-1], blend)
                for y in range(e):
                    t[:, :, :, :, y] = a[:, :, :, :, -e + y] * (1 - y / e) + t[:, :, :, :, y] * (y / e)
            out.append(t[:, :, :, :limit, :limit])
        out_rows.append(torch.cat(out, dim=-1))
    return torch.cat(out_rows, dim=-2)


def test_tiled_encode_matches_upstream_algorithm_with_real_model(tiny):
    # overlap 0.5 so that blends span 2 latents (the tiny default gives 1) and the ramp is exercised
    model = _clone(tiny, scaling_factor=None, spatial_tile_size=128, tile_overlap_factor=0.5, use_temporal_tiling=False)
    torch.manual_seed(8)
    x = torch.rand(1, 3, 4, 192, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), _reference_tiled_encode_spatial(model, x), atol=1e-6, rtol=1e-5)


def test_tiled_close_to_untiled_for_near_local_model(tiny):
    """Tiled latents differ from untiled ones by design (docs/models.md#hunyuanvideo-vae: zero padding at tile seams).
    With every
    residual main branch zeroed the AE is local up to its 3x3x3 stem/head convs, so the tiled result must stay
    close: max |tiled - untiled| <= 0.35 * max |untiled| (measured spatial/temporal: 0.09/0.23 encode,
    0.014/0.08 decode; a misplaced tile gives O(1)). Exact tiling arithmetic is tested above."""
    model = _clone(tiny)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, ResidualBlock):
                for p in mod.main.parameters():
                    p.zero_()
    plain = _clone(model, use_spatial_tiling=False, use_temporal_tiling=False)
    torch.manual_seed(9)
    for shape in [(1, 3, 8, 192, 192), (1, 3, 24, 64, 64)]:
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            zt, zp = model.encode(x), plain.encode(x)
            assert zt.shape == zp.shape
            assert (zt - zp).abs().max() <= 0.35 * zp.abs().max()
            dt, dp = model.decode(zp), plain.decode(zp)
            assert dt.shape == dp.shape == x.shape
            assert (dt - dp).abs().max() <= 0.35 * dp.abs().max()


# ---------------------------------------------------------------------------------------------------------
# checkpoint layout and loading
# ---------------------------------------------------------------------------------------------------------


def test_official_key_set_full_config():
    with torch.device("meta"):
        full = VideoDCAE()
    sd = full.state_dict()
    # ResBlock 5 keys, EViT block 13, down/upsample 2; encoder 2 + 3*2*5 + 5*2 + 3*3*13 + 2 = 161,
    # decoder 2 + 3*3*5 + 5*2 + 3*3*13 + 4 = 178
    assert len(sd) == 339
    expected = {
        "encoder.project_in.conv.weight": (128, 3, 3, 3, 3),
        "encoder.stages.0.op_list.1.main.conv1.conv.weight": (128, 128, 3, 3, 3),
        "encoder.stages.0.op_list.1.main.conv2.norm.bias": (128,),
        "encoder.stages.0.op_list.2.main.conv.weight": (256, 128, 3, 3, 3),  # downsample after 2 blocks
        "encoder.stages.3.op_list.0.context_module.main.qkv.conv.weight": (1536, 512, 1, 1, 1),
        "encoder.stages.3.op_list.0.context_module.main.aggreg.0.0.weight": (1536, 1, 5, 5, 5),
        "encoder.stages.3.op_list.0.context_module.main.aggreg.0.1.weight": (1536, 32, 1, 1, 1),
        "encoder.stages.3.op_list.0.context_module.main.proj.conv.weight": (512, 1024, 1, 1, 1),
        "encoder.stages.3.op_list.0.context_module.main.proj.norm.weight": (512,),
        "encoder.stages.4.op_list.2.local_module.main.inverted_conv.conv.weight": (8192, 1024, 1, 1, 1),
        "encoder.stages.4.op_list.2.local_module.main.depth_conv.conv.bias": (8192,),
        "encoder.stages.5.op_list.2.local_module.main.point_conv.conv.weight": (1024, 4096, 1, 1, 1),
        "encoder.project_out.main.op_list.0.conv.weight": (128, 1024, 3, 3, 3),
        "decoder.project_in.main.conv.weight": (1024, 128, 3, 3, 3),
        "decoder.stages.0.op_list.0.main.conv.conv.weight": (128, 256, 3, 3, 3),  # upsample 256 -> 128
        "decoder.stages.3.op_list.0.main.conv.conv.weight": (512, 1024, 3, 3, 3),
        "decoder.stages.5.op_list.2.context_module.main.qkv.conv.weight": (3072, 1024, 1, 1, 1),
        "decoder.stages.2.op_list.3.main.conv2.conv.weight": (512, 512, 3, 3, 3),
        "decoder.project_out.op_list.0.weight": (128,),
        "decoder.project_out.op_list.0.bias": (128,),
        "decoder.project_out.op_list.2.conv.weight": (3, 128, 3, 3, 3),
        "decoder.project_out.op_list.2.conv.bias": (3,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "decoder.stages.5.op_list.3.context_module.main.qkv.conv.weight" not in sd  # stage 5: no upsample
    assert not any(k.endswith(("running_mean", "num_batches_tracked")) for k in sd)
    assert sum(p.numel() for p in full.parameters()) == 459_462_147
    assert full.get_last_layer() is full.decoder.project_out.op_list[2].conv.weight


def test_from_pretrained_round_trip_and_errors(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "dcae.safetensors"
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file(sd, str(path))
    loaded = VideoDCAE.from_pretrained(path, config=DCAEConfig.tiny())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.rand(1, 3, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), tiny.encode(x))

    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        VideoDCAE.from_pretrained(tmp_path / "nope.safetensors", config=DCAEConfig.tiny())
    broken = dict(sd)
    broken.pop("decoder.project_out.op_list.2.conv.bias")
    broken["extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(KeyError) as err:
        VideoDCAE.from_pretrained(tmp_path / "broken.safetensors", config=DCAEConfig.tiny())
    msg = str(err.value)
    assert "1 missing" in msg and "decoder.project_out.op_list.2.conv.bias" in msg
    assert "1 unexpected" in msg and "extra.weight" in msg
    # full config against the tiny file: many missing/unexpected keys, summarised
    with pytest.raises((KeyError, ValueError), match="missing|mismatch"):
        VideoDCAE.from_pretrained(path)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="multiple of 4.*got 6"):
        tiny.latent_frames(6)
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny.encode(torch.zeros(1, 3, 6, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32.*H=48"):
        tiny.encode(torch.zeros(1, 3, 4, 48, 64))
    with pytest.raises(ValueError, match="3 input channels; got 4"):
        tiny.encode(torch.zeros(1, 4, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tiny.encode(torch.zeros(3, 4, 64, 64))
    with pytest.raises(ValueError, match="8 latent channels; got 16"):
        tiny.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match="latent"):
        tiny.decode(torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match="tile"):
        DCAEConfig.tiny(spatial_tile_size=64)  # stride 48 is not a multiple of 32


# ---------------------------------------------------------------------------------------------------------
# GAN training pieces
# ---------------------------------------------------------------------------------------------------------


def test_discriminator_layout():
    torch.manual_seed(10)
    d = NLayerDiscriminator3D(input_nc=3, ndf=4, n_layers=5)
    convs = [m for m in d.main if isinstance(m, torch.nn.Conv3d)]
    assert [c.stride for c in convs] == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]  # mult capped at 8
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in d.main) == 5
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in d.main) == 5
    assert "main.0.weight" in d.state_dict() and "main.2.weight" in d.state_dict()
    assert d.eval()(torch.randn(1, 3, 8, 64, 64)).shape == (1, 1, 2, 2, 2)
    full = NLayerDiscriminator3D()
    w = torch.cat([m.weight.flatten() for m in full.main if isinstance(m, torch.nn.Conv3d)])
    assert abs(w.std().item() - 0.02) < 1e-3


def test_hinge_generator_and_nll_losses():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # real: relu(1 - r) = [0, 0.5, 2] -> mean 5/6 ; fake: relu(1 + f) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert generator_loss(fake).item() == pytest.approx(1 / 3)
    torch.manual_seed(11)
    x, y = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    perc = lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))  # stand-in perceptual distance per frame
    frames = lambda v: v.transpose(1, 2).reshape(8, 3, 8, 8)
    ref = ((x - y).abs().sum() + 0.5 * perc(frames(x), frames(y)).sum() * 3 * 8 * 8) / 8
    torch.testing.assert_close(reconstruction_nll(x, y, perc, 0.5), ref)
    torch.testing.assert_close(reconstruction_nll(x, y), (x - y).abs().sum() / 8)


def test_adaptive_weight_matches_direct_autograd():
    torch.manual_seed(12)
    ae = VideoDCAE.tiny()
    disc = NLayerDiscriminator3D(ndf=4, n_layers=5).eval()
    x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
    recon, _ = ae(x)
    nll = reconstruction_nll(x, recon)
    g = generator_loss(disc(recon))
    last = ae.get_last_layer()
    d = adaptive_disc_weight(nll, g, last, disc_weight=0.05)

    # direct: separate backward passes, reading .grad of the last layer
    ae.zero_grad()
    nll.backward(retain_graph=True)
    g_nll = last.grad.detach().clone()
    ae.zero_grad()
    g.backward(retain_graph=True)
    g_g = last.grad.detach().clone()
    expected = torch.clamp(g_nll.norm() / (g_g.norm() + 1e-4), 0, 1e4) * 0.05
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-8)
    assert not d.requires_grad and d.item() > 0
    # clamping at 1e4 when the generator gradient vanishes
    zero_g = (last * 0).sum()
    assert adaptive_disc_weight(nll, zero_g, last, disc_weight=1.0).item() == pytest.approx(1e4)
