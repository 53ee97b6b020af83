"""Key names of the official Open-Sora / HunyuanVideo VAE checkpoint (`hunyuan_vae.safetensors`).

The official names are those of Open-Sora's module tree (`opensora/models/hunyuan_vae/{vae.py,
unet_causal_3d_blocks.py,autoencoder_kl_causal_3d.py}`), loaded there with a plain `load_state_dict(strict=True)`
and no renaming (`opensora/utils/ckpt.py: load_checkpoint`). `official_state_dict_shapes(config)` writes that key
set down from the module-tree rules alone (it never looks at a built model):

* every causal conv is a wrapper whose `nn.Conv3d` sits at `.conv` -> `<name>.conv.{weight,bias}`
  (`conv_in`, `conv_out`, resnet `conv1`/`conv2`/`conv_shortcut`, and `downsamplers.0.conv` /
  `upsamplers.0.conv`, which wrap a causal conv again -> `...downsamplers.0.conv.conv.weight`);
* `quant_conv` / `post_quant_conv` are plain 1x1x1 `nn.Conv3d` -> `quant_conv.{weight,bias}`;
* GroupNorms: resnet `norm1`/`norm2`, block-level `conv_norm_out`, attention `group_norm`;
* the mid attention is diffusers' `Attention` (one head of width C) -> `to_q`, `to_k`, `to_v`, `to_out.0`.

diffusers' `AutoencoderKLHunyuanVideo` happens to use the very same attribute names (its own conversion script,
`scripts/convert_hunyuan_video_to_diffusers.py`, has an empty `VAE_KEYS_RENAME_DICT`), so the official->diffusers
map is the identity on this key set. It is still kept explicit (`OFFICIAL_TO_DIFFUSERS_RENAMES`) and tested to be
a bijection, so that a future diffusers rename shows up as a failing test, not as a silent mis-load.
"""

from __future__ import annotations

from .config import HunyuanVAEConfig

# (official substring, diffusers substring) pairs; empty because the two module trees coincide (see above).
OFFICIAL_TO_DIFFUSERS_RENAMES: tuple[tuple[str, str], ...] = ()

Shape = tuple[int, ...]


def _conv(out: dict, name: str, cin: int, cout: int, k: int, wrapped: bool = True) -> None:
    prefix = f"{name}.conv" if wrapped else name
    out[f"{prefix}.weight"] = (cout, cin, k, k, k)
    out[f"{prefix}.bias"] = (cout,)


def _norm(out: dict, name: str, c: int) -> None:
    out[f"{name}.weight"] = (c,)
    out[f"{name}.bias"] = (c,)


def _resnet(out: dict, name: str, cin: int, cout: int) -> None:
    _norm(out, f"{name}.norm1", cin)
    _conv(out, f"{name}.conv1", cin, cout, 3)
    _norm(out, f"{name}.norm2", cout)
    _conv(out, f"{name}.conv2", cout, cout, 3)
    if cin != cout:
        _conv(out, f"{name}.conv_shortcut", cin, cout, 1)


def _mid_block(out: dict, name: str, c: int, attention: bool) -> None:
    _resnet(out, f"{name}.resnets.0", c, c)
    if attention:
        a = f"{name}.attentions.0"
        _norm(out, f"{a}.group_norm", c)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            out[f"{a}.{proj}.weight"] = (c, c)
            out[f"{a}.{proj}.bias"] = (c,)
    _resnet(out, f"{name}.resnets.1", c, c)


def official_state_dict_shapes(config: HunyuanVAEConfig) -> dict[str, Shape]:
    """Official checkpoint key -> tensor shape, derived from the module-tree rules of
    docs/models.md#hunyuanvideo-vae."""
    ch = config.block_out_channels
    n = len(ch)
    lat = config.latent_channels
    out: dict[str, Shape] = {}

    # encoder
    _conv(out, "encoder.conv_in", config.in_channels, ch[0], 3)
    strides = config.down_strides()
    prev = ch[0]
    for i in range(n):
        for j in range(config.layers_per_block):
            cin = prev if j == 0 else ch[i]
            _resnet(out, f"encoder.down_blocks.{i}.resnets.{j}", cin, ch[i])
        if strides[i] is not None:
            _conv(out, f"encoder.down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3)
        prev = ch[i]
    _mid_block(out, "encoder.mid_block", ch[-1], config.mid_block_add_attention)
    _norm(out, "encoder.conv_norm_out", ch[-1])
    _conv(out, "encoder.conv_out", ch[-1], 2 * lat, 3)

    # decoder
    rev = list(reversed(ch))
    _conv(out, "decoder.conv_in", lat, rev[0], 3)
    _mid_block(out, "decoder.mid_block", rev[0], config.mid_block_add_attention)
    factors = config.up_factors()
    prev = rev[0]
    for i in range(n):
        for j in range(config.layers_per_block + 1):
            cin = prev if j == 0 else rev[i]
            _resnet(out, f"decoder.up_blocks.{i}.resnets.{j}", cin, rev[i])
        if factors[i] is not None:
            _conv(out, f"decoder.up_blocks.{i}.upsamplers.0.conv", rev[i], rev[i], 3)
        prev = rev[i]
    _norm(out, "decoder.conv_norm_out", ch[0])
    _conv(out, "decoder.conv_out", ch[0], config.out_channels, 3)

    # 1x1x1 latent projections (plain nn.Conv3d, no causal wrapper)
    _conv(out, "quant_conv", 2 * lat, 2 * lat, 1, wrapped=False)
    _conv(out, "post_quant_conv", lat, lat, 1, wrapped=False)
    return out


def official_state_dict_keys(config: HunyuanVAEConfig) -> list[str]:
    """Sorted official checkpoint keys for `config`."""
    return sorted(official_state_dict_shapes(config))


def official_to_diffusers_key(key: str) -> str:
    for old, new in OFFICIAL_TO_DIFFUSERS_RENAMES:
        key = key.replace(old, new)
    return key


def diffusers_to_official_key(key: str) -> str:
    for old, new in reversed(OFFICIAL_TO_DIFFUSERS_RENAMES):
        key = key.replace(new, old)
    return key
