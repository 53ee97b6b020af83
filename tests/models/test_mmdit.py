"""MMDiT: official key set, parameter count, RoPE layouts, FLUX conversion, and the forward vs a reference written from
docs/models.md."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from soraflow.models.mmdit import MMDiT, convert_flux_state_dict, get_config, load_flux_checkpoint, load_mmdit_checkpoint
from soraflow.models.mmdit.checkpoint import CheckpointMismatch
from soraflow.models.mmdit.layers import timestep_embedding
from soraflow.models.mmdit.rope import apply_rope, rope_angles, rope_tables, rotate_half_permutation
from soraflow.models.packing import image_position_ids, pack, text_position_ids, unpack


def official_key_shapes(depth=19, single=38, d=3072, in_ch=64, mlp=12288, vec=768, ctx=4096, head=128):
    """The key/shape table of docs/models.md#mmdit-checkpoint-keys, written out independently of the model code."""
    s = {
        "img_in.weight": (d, in_ch), "img_in.bias": (d,),
        "time_in.in_layer.weight": (d, 256), "time_in.in_layer.bias": (d,),
        "time_in.out_layer.weight": (d, d), "time_in.out_layer.bias": (d,),
        "vector_in.in_layer.weight": (d, vec), "vector_in.in_layer.bias": (d,),
        "vector_in.out_layer.weight": (d, d), "vector_in.out_layer.bias": (d,),
        "cond_in.weight": (d, 68), "cond_in.bias": (d,),  # (16 latent + 1 mask) x 2 x 2
        "txt_in.weight": (d, ctx), "txt_in.bias": (d,),
        "final_layer.linear.weight": (in_ch, d), "final_layer.linear.bias": (in_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        for side in ("img", "txt"):
            p = f"double_blocks.{i}.{side}"
            s[f"{p}_mod.lin.weight"], s[f"{p}_mod.lin.bias"] = (6 * d, d), (6 * d,)
            for proj in ("q_proj", "k_proj", "v_proj", "proj"):
                s[f"{p}_attn.{proj}.weight"], s[f"{p}_attn.{proj}.bias"] = (d, d), (d,)
            s[f"{p}_attn.norm.query_norm.scale"] = s[f"{p}_attn.norm.key_norm.scale"] = (head,)
            s[f"{p}_mlp.0.weight"], s[f"{p}_mlp.0.bias"] = (mlp, d), (mlp,)
            s[f"{p}_mlp.2.weight"], s[f"{p}_mlp.2.bias"] = (d, mlp), (d,)
    for i in range(single):
        p = f"single_blocks.{i}"
        for proj in ("q_proj", "k_proj"):
            s[f"{p}.{proj}.weight"], s[f"{p}.{proj}.bias"] = (d, d), (d,)
        s[f"{p}.v_mlp.weight"], s[f"{p}.v_mlp.bias"] = (d + mlp, d), (d + mlp,)
        s[f"{p}.linear2.weight"], s[f"{p}.linear2.bias"] = (d, d + mlp), (d,)
        s[f"{p}.norm.query_norm.scale"] = s[f"{p}.norm.key_norm.scale"] = (head,)
        s[f"{p}.modulation.lin.weight"], s[f"{p}.modulation.lin.bias"] = (3 * d, d), (3 * d,)
    return s


def test_11b_on_meta_has_official_keys_shapes_and_count():
    with torch.device("meta"):
        model = MMDiT(get_config("opensora2-11b"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = official_key_shapes()
    assert want["cond_in.weight"] == (3072, 68)
    assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    assert got == want
    n = model.num_parameters()
    assert round(n / 1e9, 2) == 11.89
    # Per-part counts of docs/models.md#mmdit-configurations: double 339.83 M, single 141.59 M.
    assert round(sum(p.numel() for p in model.double_blocks[0].parameters()) / 1e6, 2) == 339.83
    assert round(sum(p.numel() for p in model.single_blocks[0].parameters()) / 1e6, 2) == 141.59


def test_high_compression_config_shapes():
    with torch.device("meta"):
        model = MMDiT(get_config("opensora2-hc"))
    sd = model.state_dict()
    assert tuple(sd["img_in.weight"].shape) == (3072, 128)
    assert tuple(sd["cond_in.weight"].shape) == (3072, 129)
    assert tuple(sd["final_layer.linear.weight"].shape) == (128, 3072)


def test_rope_angles_follow_the_formula():
    cfg = get_config("opensora2-11b")
    ids = torch.tensor([[[3.0, 5.0, 7.0]]])
    ang = rope_angles(ids, cfg.axes_dim, cfg.theta)[0, 0]
    assert ang.shape == (64,)
    # t axis: 8 angles with omega_j = 10000^(-2j/16); then h (28) and w (28) with dim 56.
    for j in range(8):
        assert ang[j].item() == pytest.approx(3 * 10000 ** (-2 * j / 16), rel=1e-6)
    for j in range(28):
        assert ang[8 + j].item() == pytest.approx(5 * 10000 ** (-2 * j / 56), rel=1e-6)
        assert ang[36 + j].item() == pytest.approx(7 * 10000 ** (-2 * j / 56), rel=1e-6)
    cos, sin = rope_tables(torch.zeros(1, 4, 3), cfg.axes_dim, cfg.theta)
    x = torch.randn(1, 2, 4, 128)
    assert torch.equal(apply_rope(x, cos, sin), x)  # text / origin tokens: identity rotation


def test_interleaved_rope_on_flux_rows_equals_rotate_half_on_permuted_rows():
    torch.manual_seed(0)
    d, hd, n = 64, 16, 10
    axes, theta = (4, 6, 6), 10000
    x = torch.randn(n, d, dtype=torch.float64)
    wq, wk = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    ids = torch.randint(0, 9, (1, n, 3)).double()
    heads = d // hd

    def scores(wq, wk, layout):
        q = (x @ wq.T).view(n, heads, hd).transpose(0, 1)[None]
        k = (x @ wk.T).view(n, heads, hd).transpose(0, 1)[None]
        cos, sin = rope_tables(ids, axes, theta, layout)
        q, k = apply_rope(q, cos.double(), sin.double(), layout), apply_rope(k, cos.double(), sin.double(), layout)
        return q @ k.transpose(-1, -2)

    perm = rotate_half_permutation(hd)
    permute = lambda w: w.view(heads, hd, d)[:, perm].reshape(d, d)  # noqa: E731
    ref = scores(wq, wk, "interleaved")
    assert torch.allclose(scores(permute(wq), permute(wk), "rotate_half"), ref, atol=1e-10)
    assert not torch.allclose(scores(wq, wk, "rotate_half"), ref, atol=1e-3)  # the permutation matters


def _inputs(cfg, b=2, t=2, h=4, w=6, n_txt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(b, cfg.latent_channels, t, h, w, generator=g)
    img = pack(lat, cfg.patch_size)
    return dict(
        img=img,
        img_ids=image_position_ids(b, t, h, w, cfg.patch_size),
        txt=torch.randn(b, n_txt, cfg.context_in_dim, generator=g),
        txt_ids=text_position_ids(b, n_txt),
        timesteps=torch.rand(b, generator=g),
        y_vec=torch.randn(b, cfg.vec_in_dim, generator=g),
        cond=torch.randn(b, img.shape[1], cfg.cond_channels, generator=g),
    )


def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_flux_layout_checkpoint_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    cfg_flux = get_config("tiny", rope_layout="interleaved", guidance_embed=True, cond_embed=False)
    flux = _randomize(MMDiT(cfg_flux)).eval()
    # Write it in FLUX's own layout: fused qkv / linear1, interleaved rows, guidance_in present.
    sd = flux.state_dict()
    fused = {}
    for k, v in sd.items():
        if ".q_proj." in k and "double_blocks" in k:
            kind = k.rsplit(".", 1)[1]
            base = k.split(".q_proj.")[0]
            fused[f"{base}.qkv.{kind}"] = torch.cat([v, sd[f"{base}.k_proj.{kind}"], sd[f"{base}.v_proj.{kind}"]])
        elif ".q_proj." in k:
            kind = k.rsplit(".", 1)[1]
            base = k.split(".q_proj.")[0]
            fused[f"{base}.linear1.{kind}"] = torch.cat([v, sd[f"{base}.k_proj.{kind}"], sd[f"{base}.v_mlp.{kind}"]])
        elif any(s in k for s in (".k_proj.", ".v_proj.", ".v_mlp.")):
            continue
        else:
            fused[k] = v
    path = tmp_path / "flux1-dev.safetensors"
    save_file({k: v.contiguous() for k, v in fused.items()}, str(path))

    # Same weights loaded as a rotate-half, guidance-embedded model: identical outputs.
    ours = load_flux_checkpoint(MMDiT(get_config("tiny", guidance_embed=True, cond_embed=False)), path).eval()
    x = _inputs(cfg_flux)
    x.pop("cond")
    g = torch.full((2,), 0.4)
    with torch.no_grad():
        assert torch.allclose(ours(**x, guidance=g), flux(**x, guidance=g), atol=1e-5)

    # The Open-Sora stage-1 init: guidance_in dropped, cond_in new and zero, output = FLUX with no guidance term.
    osora = load_flux_checkpoint(MMDiT(get_config("tiny")), path).eval()
    assert torch.count_nonzero(osora.cond_in.weight) == 0
    assert "guidance_in.in_layer.weight" not in osora.state_dict()
    with torch.no_grad():
        out = osora(**x, cond=torch.randn(2, x["img"].shape[1], 68))
        flux.guidance_in = None
        flux.config = flux.config.with_overrides(guidance_embed=False)
        assert torch.allclose(out, flux(**x), atol=1e-5)


def _reference_forward(sd, cfg, img, img_ids, txt, txt_ids, timesteps, y_vec, cond):
    """A functional forward from docs/models.md (#mmdit-forward-pass to #mmdit-3d-rope), written without the model's
    modules."""
    lin = lambda x, p: F.linear(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    ln = lambda x: F.layer_norm(x, x.shape[-1:], eps=1e-6)  # noqa: E731
    H, D = cfg.num_heads, cfg.head_dim

    def rms(x, scale):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale

    def temb(t):
        half = 128
        f = torch.exp(-math.log(10000) * torch.arange(half) / half)
        a = 1000 * t[:, None] * f
        return torch.cat([a.cos(), a.sin()], -1)

    ids = torch.cat([txt_ids, img_ids], 1)
    angles = []
    for i, dim in enumerate(cfg.axes_dim):
        om = 10000.0 ** (-torch.arange(0, dim, 2) / dim)
        angles.append(ids[..., i : i + 1] * om)
    ang = torch.cat(angles, -1)  # [B, L, D/2]

    def rope(x):  # x [B, L, H, D], dim j paired with j + D/2
        c, s = ang.cos()[:, :, None], ang.sin()[:, :, None]
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([a * c - b * s, b * c + a * s], -1)

    def attn(q, k, v):  # [B, L, H, D]
        w = torch.einsum("blhd,bmhd->bhlm", rope(q), rope(k)) / math.sqrt(D)
        return torch.einsum("bhlm,bmhd->blhd", w.softmax(-1), v).flatten(2)

    silu = F.silu
    x_img = lin(img, "img_in") + lin(cond, "cond_in")
    vec = lin(silu(lin(temb(timesteps), "time_in.in_layer")), "time_in.out_layer")
    vec = vec + lin(silu(lin(y_vec, "vector_in.in_layer")), "vector_in.out_layer")
    x_txt = lin(txt, "txt_in")
    n_txt = txt.shape[1]
    for i in range(cfg.depth):
        p = f"double_blocks.{i}"
        streams = {}
        for side, x in (("txt", x_txt), ("img", x_img)):
            m = lin(silu(vec), f"{p}.{side}_mod.lin")[:, None].chunk(6, -1)
            a = (1 + m[1]) * ln(x) + m[0]
            q = rms(lin(a, f"{p}.{side}_attn.q_proj").unflatten(-1, (H, D)), sd[f"{p}.{side}_attn.norm.query_norm.scale"])
            k = rms(lin(a, f"{p}.{side}_attn.k_proj").unflatten(-1, (H, D)), sd[f"{p}.{side}_attn.norm.key_norm.scale"])
            v = lin(a, f"{p}.{side}_attn.v_proj").unflatten(-1, (H, D))
            streams[side] = (x, m, q, k, v)
        o = attn(*(torch.cat([streams["txt"][j], streams["img"][j]], 1) for j in (2, 3, 4)))
        outs = {"txt": o[:, :n_txt], "img": o[:, n_txt:]}
        for side in ("txt", "img"):
            x, m = streams[side][:2]
            x = x + m[2] * lin(outs[side], f"{p}.{side}_attn.proj")
            h = (1 + m[4]) * ln(x) + m[3]
            x = x + m[5] * lin(F.gelu(lin(h, f"{p}.{side}_mlp.0"), approximate="tanh"), f"{p}.{side}_mlp.2")
            if side == "txt":
                x_txt = x
            else:
                x_img = x
    x = torch.cat([x_txt, x_img], 1)
    d = cfg.hidden_size
    for i in range(cfg.depth_single_blocks):
        p = f"single_blocks.{i}"
        m = lin(silu(vec), f"{p}.modulation.lin")[:, None].chunk(3, -1)
        a = (1 + m[1]) * ln(x) + m[0]
        q = rms(lin(a, f"{p}.q_proj").unflatten(-1, (H, D)), sd[f"{p}.norm.query_norm.scale"])
        k = rms(lin(a, f"{p}.k_proj").unflatten(-1, (H, D)), sd[f"{p}.norm.key_norm.scale"])
        vm = lin(a, f"{p}.v_mlp")
        v, h = vm[..., :d].unflatten(-1, (H, D)), vm[..., d:]
        x = x + m[2] * lin(torch.cat([attn(q, k, v), F.gelu(h, approximate="tanh")], -1), f"{p}.linear2")
    sh, sc = lin(silu(vec), "final_layer.adaLN_modulation.1")[:, None].chunk(2, -1)
    return lin((1 + sc) * ln(x[:, n_txt:]) + sh, "final_layer.linear")


def test_forward_matches_spec_reference():
    cfg = get_config("tiny")
    model = _randomize(MMDiT(cfg)).eval()
    x = _inputs(cfg)
    with torch.no_grad():
        out = model(**x)
        ref = _reference_forward(model.state_dict(), cfg, **x)
    assert out.shape == (2, 2 * 2 * 3, 64)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_fresh_model_ignores_cond_until_cond_in_learns():
    cfg = get_config("tiny")
    model = MMDiT(cfg).eval()
    x = _inputs(cfg)
    with torch.no_grad():
        a = model(**x)
        b = model(**{**x, "cond": torch.randn_like(x["cond"])})
        assert torch.equal(a, b)
        model.cond_in.weight.normal_()
        assert not torch.allclose(model(**x), a)


def test_text_and_image_positions():
    """Text sits at position 0 and precedes the image: permuting text tokens changes nothing but their order."""
    cfg = get_config("tiny")
    model = _randomize(MMDiT(cfg)).eval()
    x = _inputs(cfg)
    perm = torch.randperm(x["txt"].shape[1])
    with torch.no_grad():
        assert torch.allclose(model(**x), model(**{**x, "txt": x["txt"][:, perm]}), atol=1e-5)


def test_selective_checkpointing_keeps_values_and_gradients():
    from soraflow.training.parallel.mmdit import apply_activation_checkpointing
    cfg = get_config("tiny")
    x = _inputs(cfg)
    grads = []
    for settings in (None, (1, 2), (100, 100)):
        model = _randomize(MMDiT(cfg))
        model.train()
        apply_activation_checkpointing(model, settings)
        out = model(**x)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    for out, g in grads[1:]:
        assert torch.allclose(out, grads[0][0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g, grads[0][1]))


def test_timestep_embedding_values_and_bf16_rounding():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t)
    assert emb.shape == (3, 256)
    assert torch.allclose(emb[:, 0], torch.cos(1000 * t))  # first frequency is 1, cos half first
    assert torch.allclose(emb[:, 128], torch.sin(1000 * t), atol=1e-4)
    # bf16 inputs are scaled in bf16: 1000 * 0.7 rounds to 700 in bf16 (steps of 4 above 512).
    tb = torch.tensor([0.7], dtype=torch.bfloat16)
    assert timestep_embedding(tb)[0, 0].item() == pytest.approx(math.cos((tb * 1000).float().item()), abs=1e-6)


def test_pack_unpack_round_trip_and_order():
    x = torch.arange(2 * 3 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 3, 2, 4, 4)
    tok = pack(x, 2)
    assert tok.shape == (2, 2 * 2 * 2, 12)
    assert torch.equal(unpack(tok, 2, 2, 4, 4), x)
    # token 1 = (t=0, hp=0, wp=1); feature index c*4 + ph*2 + pw
    assert tok[0, 1, 1 * 4 + 1 * 2 + 0].item() == x[0, 1, 0, 1, 2].item()
    ids = image_position_ids(1, 2, 4, 4, 2)
    assert ids[0, 5].tolist() == [1.0, 0.0, 1.0]


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    cfg = get_config("tiny")
    model = _randomize(MMDiT(cfg))
    path = tmp_path / "Open_Sora_v2.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = load_mmdit_checkpoint(MMDiT(cfg), path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with torch.device("meta"):
        on_meta = MMDiT(cfg)
    loaded = load_mmdit_checkpoint(on_meta.to(torch.bfloat16), tmp_path)  # directory form, dtype kept
    assert loaded.img_in.weight.dtype == torch.bfloat16 and not loaded.img_in.weight.is_meta

    sd = model.state_dict()
    broken = {k: v for k, v in sd.items() if k != "txt_in.bias"}
    broken["extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"1 missing keys: txt_in.bias(.|\n)*1 unexpected keys: extra.weight"):
        load_mmdit_checkpoint(MMDiT(cfg), tmp_path / "broken.safetensors")

    hc = _randomize(MMDiT(get_config("tiny-hc")))
    save_file(hc.state_dict(), str(tmp_path / "hc.safetensors"))
    with pytest.raises(CheckpointMismatch, match="img_in takes 8 input channels in the checkpoint, 64 in the model"):
        load_mmdit_checkpoint(MMDiT(cfg), tmp_path / "hc.safetensors")
    with pytest.raises(FileNotFoundError, match="weights not found: .*nope.safetensors"):
        load_mmdit_checkpoint(MMDiT(cfg), tmp_path / "nope.safetensors")


def test_bad_inputs_name_the_field():
    cfg = get_config("tiny")
    model = MMDiT(cfg)
    x = _inputs(cfg)
    with pytest.raises(ValueError, match=r"txt must be \[2, L_txt, 32\], got \(2, 5, 7\)"):
        model(**{**x, "txt": torch.randn(2, 5, 7)})
    with pytest.raises(ValueError, match=r"img must be \[B, L, 64\] packed tokens"):
        model(**{**x, "img": torch.randn(2, 24, 15)})
    with pytest.raises(ValueError, match="latent height/width"):
        pack(torch.randn(1, 4, 1, 5, 4), 2)


def test_fused_projections_keep_outputs_and_state_dict():
    cfg = get_config("tiny")
    model = _randomize(MMDiT(cfg)).eval()
    x = _inputs(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(**x)
        model.fuse_projections()
        assert model.single_blocks[0]._fused is not None
        assert torch.allclose(model(**x), ref, atol=1e-5)  # fast path: GELU epilogue op, linear2 in two parts
    with torch.enable_grad():
        assert torch.allclose(model(**x), ref, atol=1e-5)  # with grad: the plain modules on the fused views
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    model.to(torch.float64)  # moving drops the fused views rather than using stale weights
    assert model.single_blocks[0]._fused is None and model.double_blocks[0].img_attn._fused is None
    with torch.no_grad():
        assert torch.allclose(model(**{k: v.double() for k, v in x.items()}).float(), ref, atol=1e-5)


def test_concatenated_projections_give_the_separate_linears_values_and_gradients():
    from soraflow.training.parallel.mmdit import set_concat_projections

    cfg = get_config("tiny")
    x = _inputs(cfg)
    results = {}
    for concat in (True, False):
        torch.manual_seed(0)
        model = set_concat_projections(_randomize(MMDiT(cfg).double()), concat)
        out = model(**{k: v.double() for k, v in x.items()})
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum().backward()
        results[concat] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (out_cat, g_cat), (out_sep, g_sep) = results[True], results[False]
    torch.testing.assert_close(out_cat, out_sep, rtol=1e-12, atol=1e-12)
    assert g_cat.keys() == g_sep.keys() and "single_blocks.0.v_mlp.weight" in g_cat
    for name in g_sep:  # every projection weight gets exactly its own slice of the gradient
        torch.testing.assert_close(g_cat[name], g_sep[name], rtol=1e-10, atol=1e-12, msg=name)


def test_k_aligned_linear_pads_with_zeros_only():
    from soraflow.models.mmdit.layers import linear_k_aligned

    lin = torch.nn.Linear(68, 16).double()
    x = torch.randn(5, 68, dtype=torch.float64)
    padded = torch.nn.functional.linear(torch.nn.functional.pad(x, (0, 4)),
                                        torch.nn.functional.pad(lin.weight, (0, 4)), lin.bias)
    torch.testing.assert_close(padded, lin(x), rtol=1e-14, atol=1e-14)  # what the CUDA path computes
    torch.testing.assert_close(linear_k_aligned(x, lin), lin(x), rtol=0, atol=0)  # CPU: the plain layer
