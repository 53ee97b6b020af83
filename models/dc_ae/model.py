"""Video DC-AE (4x32x32, 128 latent channels): encoder, decoder, tiling and checkpoint loading
(docs/models.md#video-dc-ae).

Registered upstream as `dc-ae-f32t4c128`. Module attribute names reproduce the official state-dict keys
(`encoder.project_in.conv.weight`, `encoder.stages.{s}.op_list.{k}...`, `decoder.project_out.op_list.{0,2}...`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from .layers import (
    ChannelDuplicatingPixelShuffle,
    ConvLayer,
    EfficientViTBlock,
    IdentityLayer,
    InterpolateConvUpSample,
    OpSequential,
    PixelUnshuffleChannelAveraging,
    ResBlock,
    ResidualBlock,
    RMSNorm3d,
)

__all__ = ["DCAEConfig", "VideoDCAE", "Encoder", "Decoder", "init_dc_ae_weights"]

BLOCK_TYPES = ("ResBlock", "EViTS5_GLU")


def recorded_scaling_factor(path) -> float | None:
    """The latent scaling factor an export of ours records in its safetensors metadata (`scaling_factor`,
    measured on its training latents); None for other files (the released weights record none)."""
    if path is None:
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            sf = (f.metadata() or {}).get("scaling_factor")
    except Exception:  # noqa: BLE001 - not a single safetensors file: nothing recorded
        return None
    return float(sf) if sf else None


@dataclass
class DCAEConfig:
    """Config of the Video DC-AE. Defaults = the released `dc-ae-f32t4c128`."""

    in_channels: int = 3
    latent_channels: int = 128
    width_list: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    encoder_depth_list: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    decoder_depth_list: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    block_types: tuple[str, ...] = ("ResBlock",) * 3 + ("EViTS5_GLU",) * 3
    # temporal down/up-sampling in the resampling block of stage s (encoder: after stage s; decoder: entering s)
    temporal_resample: tuple[bool, ...] = (False, False, False, True, True, False)
    attn_head_dim: int = 32  # LiteMLA head dim
    attn_scales: tuple[int, ...] = (5,)  # LiteMLA multi-scale aggregation kernels
    mlp_expand_ratio: float = 4.0  # GLUMBConv
    # Latent scaling, DC-AE convention (issue #838): encode -> z / scaling_factor, decode -> z * scaling_factor.
    # 0.493 = configs/diffusion/train/high_compression.py; None = no scaling (configs/diffusion/inference/
    # high_compression.py and configs/vae/*). Which one the released DiT expects is unverified
    # (docs/models.md#video-dc-ae).
    scaling_factor: float | None = 0.493
    # tiling (docs/models.md#video-dc-ae: both on by default; tiles match the 256px/32-frame training size)
    use_spatial_tiling: bool = True
    use_temporal_tiling: bool = True
    spatial_tile_size: int = 256  # pixels
    temporal_tile_size: int = 32  # frames
    tile_overlap_factor: float = 0.25

    def __post_init__(self) -> None:
        n = len(self.width_list)
        for name in ("encoder_depth_list", "decoder_depth_list", "block_types", "temporal_resample"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"DCAEConfig.{name} has {len(getattr(self, name))} entries, expected {n}")
        for bt in self.block_types:
            if bt not in BLOCK_TYPES:
                raise ValueError(f"unknown block type {bt!r}; expected one of {BLOCK_TYPES}")
        if any(d < 1 for d in self.encoder_depth_list + self.decoder_depth_list):
            raise ValueError("this implementation needs depth >= 1 in every stage")
        if self.temporal_resample[-1]:
            raise ValueError("the last stage has no resampling block; temporal_resample[-1] must be False")
        sc, tc = self.spatial_compression, self.time_compression
        for what, size, comp in (("spatial", self.spatial_tile_size, sc), ("temporal", self.temporal_tile_size, tc)):
            stride = int(size * (1 - self.tile_overlap_factor))
            if size % comp or stride % comp or stride <= 0:
                raise ValueError(
                    f"{what}_tile_size {size} and its stride {stride} must be positive multiples of the "
                    f"{what} compression {comp}"
                )

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.width_list) - 1)

    @property
    def time_compression(self) -> int:
        return 2 ** sum(self.temporal_resample)

    @classmethod
    def for_weights(cls, path, tiny: bool) -> "DCAEConfig":
        """tiny/full, with the latent scaling factor an export of ours records in its safetensors metadata
        (`scaling_factor`, measured on its training latents) instead of the released model's 0.493."""
        config = cls.tiny() if tiny else cls()
        sf = recorded_scaling_factor(path)
        return replace(config, scaling_factor=sf) if sf is not None else config

    @classmethod
    def tiny(cls, **overrides: Any) -> "DCAEConfig":
        """A ~0.4M-parameter config for CPU tests; keeps 6 stages (spatial 32x, time 4x)."""
        base = dict(
            latent_channels=8,
            width_list=(8, 16, 16, 16, 32, 32),
            encoder_depth_list=(1, 1, 1, 1, 1, 1),
            decoder_depth_list=(1, 1, 1, 1, 1, 1),
            attn_head_dim=8,
            spatial_tile_size=128,
            temporal_tile_size=16,
        )
        base.update(overrides)
        return cls(**base)


# --------------------------------------------------------------------------------------------------------


def _build_block(block_type: str, width: int, cfg: DCAEConfig) -> nn.Module:
    if block_type == "ResBlock":
        return ResidualBlock(ResBlock(width), IdentityLayer())
    return EfficientViTBlock(width, cfg.attn_head_dim, tuple(cfg.attn_scales), cfg.mlp_expand_ratio)


class Encoder(nn.Module):
    """project_in conv 3->w0; stage s = depth_s blocks (+ strided-conv downsample with averaging shortcut for
    s < last); project_out = Residual(conv w_last->latent, channel-averaging shortcut)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        w = cfg.width_list
        self.project_in = ConvLayer(cfg.in_channels, w[0], 3, use_bias=True)
        stages = []
        for s, (width, depth) in enumerate(zip(w, cfg.encoder_depth_list)):
            ops = [_build_block(cfg.block_types[s], width, cfg) for _ in range(depth)]
            if s < len(w) - 1:
                temporal = cfg.temporal_resample[s]
                stride = (2, 2, 2) if temporal else (1, 2, 2)
                ops.append(
                    ResidualBlock(
                        ConvLayer(width, w[s + 1], 3, stride=stride, use_bias=True),
                        PixelUnshuffleChannelAveraging(width, w[s + 1], 2, temporal=temporal),
                    )
                )
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)
        self.project_out = ResidualBlock(
            OpSequential([ConvLayer(w[-1], cfg.latent_channels, 3, use_bias=True)]),
            PixelUnshuffleChannelAveraging(w[-1], cfg.latent_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(x)
        for stage in self.stages:
            x = stage(x)
        return self.project_out(x)


class Decoder(nn.Module):
    """project_in = Residual(conv latent->w_last, duplicating shortcut); stages run last..0, stage s < last
    starts with an upsample block (nearest ×2 + conv, duplicating-shuffle shortcut) from w[s+1] to w[s];
    project_out = [RMSNorm3d(w0), ReLU, conv w0->3]."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        w = cfg.width_list
        self.project_in = ResidualBlock(
            ConvLayer(cfg.latent_channels, w[-1], 3, use_bias=True),
            ChannelDuplicatingPixelShuffle(cfg.latent_channels, w[-1], 1),
        )
        stages = []
        for s, (width, depth) in enumerate(zip(w, cfg.decoder_depth_list)):
            ops: list[nn.Module] = []
            if s < len(w) - 1:
                temporal = cfg.temporal_resample[s]
                ops.append(
                    ResidualBlock(
                        InterpolateConvUpSample(w[s + 1], width, 2, temporal=temporal),
                        ChannelDuplicatingPixelShuffle(w[s + 1], width, 2, temporal=temporal),
                    )
                )
            ops.extend(_build_block(cfg.block_types[s], width, cfg) for _ in range(depth))
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)
        self.project_out = OpSequential(
            [RMSNorm3d(w[0]), nn.ReLU(), ConvLayer(w[0], cfg.in_channels, 3, use_bias=True)]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project_in(z)
        for stage in reversed(self.stages):
            x = stage(x)
        return self.project_out(x)


def init_dc_ae_weights(module: nn.Module, std: float = 0.02) -> None:
    """Official `init_modules(..., "trunc_normal")`: every `weight` parameter (convs *and* RMSNorm3d scales,
    which the upstream code does not special-case) ~ trunc-normal(std), every bias zero."""
    for m in module.modules():
        w = getattr(m, "weight", None)
        b = getattr(m, "bias", None)
        if isinstance(w, nn.Parameter):
            nn.init.trunc_normal_(w, std=std)
        if isinstance(b, nn.Parameter):
            nn.init.zeros_(b)


# --------------------------------------------------------------------------------------------------------


def _short_list(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


class VideoDCAE(nn.Module):
    """Video DC-AE, implementing `soraflow.models.autoencoder.VideoAutoencoder`.

    * Non-causal, deterministic (no KL): `T` must be a multiple of 4 (or 1 for a single image, which runs the
      temporal resampling blocks spatial-only); `H`, `W` multiples of 32. Latent = [B, 128, T/4, H/32, W/32].
    * Latent scaling follows the DC-AE convention (opposite of the Hunyuan/SD one, issue #838):
      `encode` returns `encoder(x) / scaling_factor`, `decode` runs `decoder(z * scaling_factor)`; each is
      applied exactly once. `DCAEConfig.scaling_factor` defaults to **0.493**, the value the DiT adaptation
      was trained with (`configs/diffusion/train/high_compression.py`); pass `scaling_factor=None` for the
      unscaled latents of the shipped inference/VAE configs. Whether the released DiT checkpoint expects
      the scaled or unscaled space is not verified (docs/models.md#video-dc-ae / open questions).
    * `encode`/`decode` work per sample and use overlapping tiles (spatial 256 px stride 192, temporal
      32 frames stride 24, linear blending of the overlap) when the input exceeds a tile, as upstream.
    * A latent with a single frame always decodes to one frame (image mode), as upstream: a 4-frame clip
      encodes to 1 latent frame and comes back as 1 frame. Temporal tiled decoding never creates such a
      1-latent tail tile (deviation from upstream, which would silently drop 3 frames, e.g. 52 -> 49).
    * `forward(x)` is the training path (no tiling, no scaling): returns (reconstruction, latent).
    """

    is_causal = False

    def __init__(self, config: DCAEConfig | None = None, init_weights: bool = True) -> None:
        super().__init__()
        self.config = config = config if config is not None else DCAEConfig()
        self.latent_channels = config.latent_channels
        self.time_compression = config.time_compression
        self.spatial_compression = config.spatial_compression
        self.scaling_factor = config.scaling_factor
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if init_weights and not any(p.is_meta for p in self.parameters()):
            init_dc_ae_weights(self)

    # ---- constructors ------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> "VideoDCAE":
        return cls(DCAEConfig.tiny(**overrides))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: DCAEConfig | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        **config_overrides: Any,
    ) -> "VideoDCAE":
        """Strictly load a safetensors state dict (keys as in the official `F32T4C128_AE.safetensors`)."""
        from safetensors.torch import load_file

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Video DC-AE checkpoint not found: {path}")
        config = config if config is not None else DCAEConfig()
        if config_overrides:
            config = replace(config, **config_overrides)
        with torch.device("meta"):
            model = cls(config, init_weights=False)
        state = load_file(path, device=str(device))
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise KeyError(
                f"{path} does not match the Video DC-AE architecture: {len(missing)} missing key(s) "
                f"[{_short_list(missing)}]; {len(unexpected)} unexpected key(s) [{_short_list(unexpected)}]"
            )
        bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
               if tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{path}: {len(bad)} shape mismatch(es): " + "; ".join(bad[:5]))
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    # ---- protocol ------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        tc = self.time_compression
        if num_frames == 1:
            return 1
        if num_frames <= 0 or num_frames % tc:
            raise ValueError(
                f"Video DC-AE is non-causal: the frame count must be a multiple of {tc} (or 1 for an image); "
                f"got {num_frames}"
            )
        return num_frames // tc

    def get_last_layer(self) -> torch.Tensor:
        """Weight used for the adaptive GAN weight (`decoder.project_out.op_list.2.conv.weight`)."""
        return self.decoder.project_out.op_list[2].conv.weight

    def _check_video(self, x: torch.Tensor) -> None:
        cfg, s = self.config, self.spatial_compression
        if x.dim() != 5:
            raise ValueError(f"Video DC-AE expects video [B, {cfg.in_channels}, T, H, W]; got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"Video DC-AE expects {cfg.in_channels} input channels; got {x.shape[1]} "
                             f"(shape {tuple(x.shape)})")
        self.latent_frames(x.shape[2])
        h, w = x.shape[-2:]
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"Video DC-AE needs H and W that are multiples of {s}; got H={h}, W={w}")

    def _check_latent(self, z: torch.Tensor) -> None:
        c = self.latent_channels
        if z.dim() != 5:
            raise ValueError(f"Video DC-AE expects a latent [B, {c}, T, h, w]; got shape {tuple(z.shape)}")
        if z.shape[1] != c:
            raise ValueError(f"Video DC-AE expects {c} latent channels; got {z.shape[1]} (shape {tuple(z.shape)})")
        if min(z.shape[2:]) == 0:
            raise ValueError(f"empty latent: shape {tuple(z.shape)}")

    def _param_dtype(self) -> torch.dtype:
        return self.encoder.project_in.conv.weight.dtype

    # per-sample, unscaled, untiled: the unit the tiling code works on
    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder(x[i : i + 1]) for i in range(x.shape[0])], dim=0)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decoder(z[i : i + 1]) for i in range(z.shape[0])], dim=0)

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> scaled latent [B, C, T/4 (1 for T=1), H/32, W/32].

        `generator` is accepted for protocol compatibility; the DC-AE latent is deterministic."""
        self._check_video(video)
        z = self._encode_tiled(video.to(self._param_dtype()))
        return z / self.scaling_factor if self.scaling_factor is not None else z

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        self._check_latent(latent)
        z = latent.to(self._param_dtype())
        if self.scaling_factor is not None:
            z = z * self.scaling_factor
        return self._decode_tiled(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: (decoder(encoder(x)), encoder(x)); no tiling, no latent scaling."""
        self._check_video(x)
        z = self.encoder(x)
        return self.decoder(z), z

    # ---- tiling -------------------------------------------------------------------------------------
    @property
    def _tiles(self) -> dict[str, int]:
        c = self.config
        sl = c.spatial_tile_size // self.spatial_compression
        tl = c.temporal_tile_size // self.time_compression
        return dict(
            s_px=c.spatial_tile_size, s_lat=sl, s_stride_px=int(c.spatial_tile_size * (1 - c.tile_overlap_factor)),
            s_stride_lat=int(sl * (1 - c.tile_overlap_factor)), s_blend_lat=int(sl * c.tile_overlap_factor),
            s_blend_px=int(c.spatial_tile_size * c.tile_overlap_factor),
            t_px=c.temporal_tile_size, t_lat=tl, t_stride_px=int(c.temporal_tile_size * (1 - c.tile_overlap_factor)),
            t_stride_lat=int(tl * (1 - c.tile_overlap_factor)), t_blend_lat=int(tl * c.tile_overlap_factor),
            t_blend_px=int(c.temporal_tile_size * c.tile_overlap_factor),
        )

    def _encode_tiled(self, x: torch.Tensor) -> torch.Tensor:
        c, k = self.config, self._tiles
        if c.use_temporal_tiling and x.shape[2] > k["t_px"]:
            return _tile_1d(x, dim=2, tile=k["t_px"], stride=k["t_stride_px"], blend=k["t_blend_lat"],
                            keep=k["t_lat"] - k["t_blend_lat"], fn=self._encode_spatial)
        return self._encode_spatial(x)

    def _encode_spatial(self, x: torch.Tensor) -> torch.Tensor:
        c, k = self.config, self._tiles
        if c.use_spatial_tiling and max(x.shape[-2:]) > k["s_px"]:
            return _tile_2d(x, tile=k["s_px"], stride=k["s_stride_px"], blend=k["s_blend_lat"],
                            keep=k["s_lat"] - k["s_blend_lat"], fn=self._encode_tile)
        return self._encode_tile(x)

    def _decode_tiled(self, z: torch.Tensor) -> torch.Tensor:
        c, k = self.config, self._tiles
        if c.use_temporal_tiling and z.shape[2] > k["t_lat"]:
            return _tile_1d(z, dim=2, tile=k["t_lat"], stride=k["t_stride_lat"], blend=k["t_blend_px"],
                            keep=k["t_px"] - k["t_blend_px"], fn=self._decode_spatial, drop_single_tail=True)
        return self._decode_spatial(z)

    def _decode_spatial(self, z: torch.Tensor) -> torch.Tensor:
        c, k = self.config, self._tiles
        if c.use_spatial_tiling and max(z.shape[-2:]) > k["s_lat"]:
            return _tile_2d(z, tile=k["s_lat"], stride=k["s_stride_lat"], blend=k["s_blend_px"],
                            keep=k["s_px"] - k["s_blend_px"], fn=self._decode_tile)
        return self._decode_tile(z)


# --------------------------------------------------------------------------------------------------------
# Tiling helpers (HunyuanVideo-style, as in upstream DCAE.{spatial,temporal}_tiled_{encode,decode})
# --------------------------------------------------------------------------------------------------------


def _blend(prev: torch.Tensor, cur: torch.Tensor, dim: int, extent: int) -> torch.Tensor:
    """Linear cross-fade: the first `extent` entries of `cur` along `dim` become
    prev[-extent + i] * (1 - i/extent) + cur[i] * (i/extent)."""
    extent = min(prev.shape[dim], cur.shape[dim], extent)
    if extent <= 0:
        return cur
    shape = [1] * cur.dim()
    shape[dim] = extent
    ramp = (torch.arange(extent, device=cur.device, dtype=torch.float32) / extent).to(cur.dtype).view(shape)
    head = prev.narrow(dim, prev.shape[dim] - extent, extent) * (1 - ramp) + cur.narrow(dim, 0, extent) * ramp
    return torch.cat([head, cur.narrow(dim, extent, cur.shape[dim] - extent)], dim=dim)


def _tile_1d(
    x: torch.Tensor, dim: int, tile: int, stride: int, blend: int, keep: int, fn, drop_single_tail: bool = False
) -> torch.Tensor:
    n = x.shape[dim]
    starts = list(range(0, n, stride))
    keep_last_whole = False
    if drop_single_tail and len(starts) > 1 and n - starts[-1] == 1:
        # Deliberate deviation from upstream: a trailing 1-latent tile would be decoded as an *image* (the
        # temporal upsamplers skip T == 1) and lose 3 frames. It lies inside the previous tile anyway, so drop
        # it and keep that tile whole.
        starts.pop()
        keep_last_whole = True
    outs = [fn(x.narrow(dim, i, min(tile, n - i))) for i in starts]
    result = []
    for i, t in enumerate(outs):
        if i > 0:
            t = outs[i] = _blend(outs[i - 1], t, dim, blend)  # upstream blends in place
        k = t.shape[dim] if (keep_last_whole and i == len(outs) - 1) else min(keep, t.shape[dim])
        result.append(t.narrow(dim, 0, k))
    return torch.cat(result, dim=dim)


def _tile_2d(x: torch.Tensor, tile: int, stride: int, blend: int, keep: int, fn) -> torch.Tensor:
    H, W = x.shape[-2:]
    rows = [
        [fn(x[..., i : i + tile, j : j + tile]) for j in range(0, W, stride)]
        for i in range(0, H, stride)
    ]
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, t in enumerate(row):
            # upstream blends in place, so the neighbours used here are the already-blended tiles
            if i > 0:
                t = _blend(rows[i - 1][j], t, -2, blend)
            if j > 0:
                t = _blend(row[j - 1], t, -1, blend)
            row[j] = t
            out_row.append(t[..., :keep, :keep])
        out_rows.append(torch.cat(out_row, dim=-1))
    return torch.cat(out_rows, dim=-2)
