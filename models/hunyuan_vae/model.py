"""`HunyuanVideoVAE`: the frozen causal 4x8x8 VAE of Open-Sora 2.0 (docs/models.md#hunyuanvideo-vae), built on
diffusers.

The network itself is diffusers' `AutoencoderKLHunyuanVideo` (checked against docs/models.md#hunyuanvideo-vae and
Open-Sora's code:
replicate-padded causal convs with T padding k-1 in front, frame-causal mask in the single-head mid attention,
GroupNorm(32, eps 1e-6) + SiLU, (128, 256, 512, 512) widths, 2 / 3 resnets per encoder / decoder block, spatial
down/up in blocks 0-2 and temporal in blocks 1-2, first-frame-only-spatial causal upsampling). Its four parts
(`encoder`, `decoder`, `quant_conv`, `post_quant_conv`) are held directly, so this module's `state_dict` carries
the official checkpoint's key names.

What this wrapper adds (and does *not* take from diffusers' `AutoencoderKLHunyuanVideo.encode/decode`):

* the full encode of docs/models.md#hunyuanvideo-vae: encoder -> quant_conv -> diagonal Gaussian (logvar clamped to
[-30, 20])
  -> sample (seeded by `generator`, drawn like Open-Sora with diffusers' `randn_tensor`) or mode
  -> `0.476986 * (z - 0)`; decode: `z / 0.476986 + 0` -> post_quant_conv -> decoder. Scaling is applied once
  each way.
* Open-Sora's tiling (spatial ON, temporal OFF by default = the diffusion configs). diffusers' own tiling uses the
  same spatial numbers and blending, but enables 16-frame temporal tiling by default (`use_framewise_encoding`),
  which Open-Sora's diffusion path does not do; so the tiling is done here with Open-Sora's parameters
  (see `config.TilingConfig`).
* input validation and `from_pretrained` with a strict, explained key check.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .config import HunyuanVAEConfig, TilingConfig, TilingPlan
from .keys import official_to_diffusers_key


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model: lists what is missing, unexpected or of another shape."""


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear cross-fade of the last `extent` entries of `a` into the first `extent` of `b` along `dim`, in place
    on `b` (Open-Sora's blend_v / blend_h / blend_t; python-float weights as there, so bf16 matches)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for k in range(extent):
        w = k / extent
        b.select(dim, k).copy_(a.select(dim, a.shape[dim] - extent + k) * (1 - w) + b.select(dim, k) * w)
    return b


class HunyuanVideoVAE(nn.Module):
    """Frozen HunyuanVideo VAE implementing `soraflow.models.autoencoder.VideoAutoencoder`.

    Videos are [B, 3, T, H, W] in [-1, 1] with T = 4k+1 and H, W multiples of 8; latents are *scaled*
    [B, 16, k+1, H/8, W/8].
    """

    is_causal = True

    def __init__(self, config: HunyuanVAEConfig | None = None):
        super().__init__()
        from diffusers import AutoencoderKLHunyuanVideo

        self.config = config or HunyuanVAEConfig.full()
        c = self.config
        ref = AutoencoderKLHunyuanVideo(**c.diffusers_kwargs())
        # Hold the parts directly: state_dict keys are then exactly the official names (keys.py).
        self.encoder = ref.encoder
        self.decoder = ref.decoder
        self.quant_conv = ref.quant_conv
        self.post_quant_conv = ref.post_quant_conv
        del ref

        self.latent_channels = c.latent_channels
        self.time_compression = c.time_compression
        self.spatial_compression = c.spatial_compression
        self.scaling_factor = c.scaling_factor
        self.shift_factor = c.shift_factor
        self.set_tiling(c.tiling)

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, **overrides) -> "HunyuanVideoVAE":
        """A ~0.75M-parameter model with the full model's module tree (widths 8-32, GroupNorm(4)), for CPU tests."""
        return cls(HunyuanVAEConfig.tiny(**overrides))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: HunyuanVAEConfig | None = None,
        tiling: TilingConfig | None = None,
    ) -> "HunyuanVideoVAE":
        """Load the official `hunyuan_vae.safetensors` (a file, or a directory holding it) strictly.

        Official key names are mapped by `keys.official_to_diffusers_key`; any missing, unexpected or wrongly
        shaped tensor raises `CheckpointMismatch`. The model comes back in eval mode with grads off (frozen).
        """
        from safetensors.torch import load_file

        file = _resolve_checkpoint(path)
        config = config or HunyuanVAEConfig.full()
        if tiling is not None:
            config = replace(config, tiling=tiling)
        with torch.device("meta"):
            model = cls(config)
        raw = load_file(str(file), device=str(torch.device(device)))
        sd = {official_to_diffusers_key(k): v for k, v in raw.items()}
        if len(sd) != len(raw):
            raise CheckpointMismatch(f"{file}: two checkpoint keys map to the same model key")
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_keys(file, sd, expected)
        sd = {k: v.to(dtype=dtype) for k, v in sd.items()}
        model.load_state_dict(sd, strict=True, assign=True)
        model.to(device=device, dtype=dtype)
        model.eval().requires_grad_(False)
        return model

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights under the official checkpoint names (identity today, see keys.py)."""
        from .keys import diffusers_to_official_key

        return {diffusers_to_official_key(k): v for k, v in self.state_dict().items()}

    def set_tiling(self, tiling: TilingConfig) -> None:
        self.tiling = tiling
        self._plan: TilingPlan = tiling.resolve(self.spatial_compression, self.time_compression)

    def enable_tiling(self, spatial: bool | None = None, temporal: bool | None = None, **sizes) -> None:
        """Switch spatial / temporal tiling and optionally change tile_sample_size / tile_sample_frames / overlap."""
        kw = dict(sizes)
        if spatial is not None:
            kw["spatial"] = spatial
        if temporal is not None:
            kw["temporal"] = temporal
        self.set_tiling(replace(self.tiling, **kw))

    # ------------------------------------------------------------------ frame / shape rules
    def latent_frames(self, num_frames: int) -> int:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(
                f"the HunyuanVideo VAE is causal and needs 4k+1 frames (1, 5, 9, ..., 129 -> k+1 latent frames); "
                f"got {num_frames} frames"
            )
        return (num_frames - 1) // self.time_compression + 1

    def pixel_frames(self, latent_frames: int) -> int:
        if latent_frames < 1:
            raise ValueError(f"need at least 1 latent frame; got {latent_frames}")
        return (latent_frames - 1) * self.time_compression + 1

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self._check_hw(height, width)
        s = self.spatial_compression
        return (self.latent_channels, self.latent_frames(num_frames), height // s, width // s)

    def _check_hw(self, height: int, width: int) -> None:
        s = self.spatial_compression
        if height % s or width % s or height <= 0 or width <= 0:
            raise ValueError(
                f"video height and width must be positive multiples of {s} for the HunyuanVideo VAE; "
                f"got {height}x{width}"
            )

    def _check_video(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"encode expects a 5-D video [B, 3, T, H, W]; got {shape}")
        if video.shape[1] != self.config.in_channels:
            raise ValueError(
                f"encode expects {self.config.in_channels} channels in dim 1 of [B, C, T, H, W]; "
                f"got shape {tuple(video.shape)}"
            )
        self.latent_frames(int(video.shape[2]))
        self._check_hw(int(video.shape[3]), int(video.shape[4]))

    def _check_latent(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"decode expects a 5-D latent [B, {self.latent_channels}, T, h, w]; got {shape}")
        if z.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode expects {self.latent_channels} latent channels in dim 1; got shape {tuple(z.shape)}"
            )
        if min(z.shape[2:]) < 1:
            raise ValueError(f"decode got an empty latent of shape {tuple(z.shape)}")

    # ------------------------------------------------------------------ encode
    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """Validated video -> posterior moments [B, 32, T_lat, h, w] (mean ‖ logvar, unclamped), tiled as set."""
        self._check_video(video)
        p = self._plan
        if p.temporal and video.shape[2] > p.enc_tile_frames:
            return self._temporal_tiled_moments(video)
        return self._spatial_moments(video)

    def _raw_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _spatial_moments(self, x: torch.Tensor) -> torch.Tensor:
        p = self._plan
        if p.spatial and (x.shape[-1] > p.enc_tile_px or x.shape[-2] > p.enc_tile_px):
            return self._spatial_tiled_moments(x)
        return self._raw_moments(x)

    def _spatial_tiled_moments(self, x: torch.Tensor) -> torch.Tensor:
        p = self._plan
        H, W = x.shape[-2:]
        rows = [
            [
                self._raw_moments(x[..., i : i + p.enc_tile_px, j : j + p.enc_tile_px])
                for j in range(0, W, p.enc_stride_px)
            ]
            for i in range(0, H, p.enc_stride_px)
        ]
        out = self._assemble_2d(rows, p.enc_blend_lat, p.enc_keep_lat)
        return out[..., : H // self.spatial_compression, : W // self.spatial_compression]

    def _temporal_tiled_moments(self, x: torch.Tensor) -> torch.Tensor:
        p = self._plan
        T = x.shape[2]
        tiles = []
        for i in range(0, T, p.enc_stride_frames):
            m = self._spatial_moments(x[:, :, i : i + p.enc_tile_frames + 1])
            tiles.append(m[:, :, 1:] if i > 0 else m)  # later tiles re-encode their first frame as an image
        out = self._assemble_t(tiles, p.enc_blend_latf, p.enc_keep_latf)
        return out[:, :, : self.latent_frames(T)]

    @staticmethod
    def _assemble_2d(rows: list[list[torch.Tensor]], blend: int, keep: int) -> torch.Tensor:
        result_rows = []
        for i, row in enumerate(rows):
            parts = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend, dim=-2)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend, dim=-1)
                parts.append(tile[..., :keep, :keep])
            result_rows.append(torch.cat(parts, dim=-1))
        return torch.cat(result_rows, dim=-2)

    @staticmethod
    def _assemble_t(tiles: list[torch.Tensor], blend: int, keep: int) -> torch.Tensor:
        parts = []
        for i, tile in enumerate(tiles):
            if i > 0:
                tile = _blend(tiles[i - 1], tile, blend, dim=2)
                parts.append(tile[:, :, :keep])
            else:
                parts.append(tile[:, :, : keep + 1])
        return torch.cat(parts, dim=2)

    def encode(
        self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] in [-1, 1] -> scaled latent [B, 16, k+1, H/8, W/8].

        Full encode (docs/models.md#hunyuanvideo-vae): moments -> DiagonalGaussian (logvar clamped to [-30, 20]) ->
        sample (default,
        as Open-Sora in training and for reference images) or mode -> `scaling_factor * (z - shift_factor)`.
        """
        from diffusers.utils.torch_utils import randn_tensor

        moments = self.encode_moments(video)
        mean, logvar = moments.chunk(2, dim=1)
        if sample:
            logvar = logvar.clamp(-30.0, 20.0)
            std = torch.exp(0.5 * logvar)
            noise = randn_tensor(mean.shape, generator=generator, device=moments.device, dtype=moments.dtype)
            z = mean + std * noise
        else:
            z = mean
        return self.scaling_factor * (z - self.shift_factor)

    # ------------------------------------------------------------------ decode
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, 16, t, h, w] -> video [B, 3, 4(t-1)+1, 8h, 8w] in about [-1, 1]."""
        self._check_latent(latent)
        z = latent / self.scaling_factor + self.shift_factor
        p = self._plan
        if p.temporal and z.shape[2] > p.dec_tile_latf:
            return self._temporal_tiled_decode(z)
        return self._spatial_decode(z)

    def _raw_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def _spatial_decode(self, z: torch.Tensor) -> torch.Tensor:
        p = self._plan
        if p.spatial and (z.shape[-1] > p.dec_tile_lat or z.shape[-2] > p.dec_tile_lat):
            return self._spatial_tiled_decode(z)
        return self._raw_decode(z)

    def _spatial_tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        p = self._plan
        h, w = z.shape[-2:]
        rows = [
            [
                self._raw_decode(z[..., i : i + p.dec_tile_lat, j : j + p.dec_tile_lat])
                for j in range(0, w, p.dec_stride_lat)
            ]
            for i in range(0, h, p.dec_stride_lat)
        ]
        out = self._assemble_2d(rows, p.dec_blend_px, p.dec_keep_px)
        return out[..., : h * self.spatial_compression, : w * self.spatial_compression]

    def _temporal_tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        p = self._plan
        t = z.shape[2]
        tiles = []
        for i in range(0, t, p.dec_stride_latf):
            d = self._spatial_decode(z[:, :, i : i + p.dec_tile_latf + 1])
            tiles.append(d[:, :, 1:] if i > 0 else d)
        out = self._assemble_t(tiles, p.dec_blend_frames, p.dec_keep_frames)
        return out[:, :, : self.pixel_frames(t)]

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """Reconstruction: decode(encode(video))."""
        return self.decode(self.encode(video, generator=generator, sample=sample))


def _resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("hunyuan_vae.safetensors", "diffusion_pytorch_model.safetensors"):
            if (p / name).is_file():
                return p / name
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        raise FileNotFoundError(
            f"no unique VAE checkpoint in directory {p}: expected hunyuan_vae.safetensors "
            f"(found {[f.name for f in files] or 'no .safetensors files'})"
        )
    raise FileNotFoundError(
        f"HunyuanVideo VAE checkpoint not found: {p} (expected hunyuan_vae.safetensors or a directory holding it)"
    )


def _check_keys(file: Path, sd: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k])
    if not (missing or unexpected or wrong):
        return

    def head(keys: list[str], fmt=lambda k: k) -> str:
        shown = ", ".join(fmt(k) for k in keys[:5])
        return f"{shown}{', ...' if len(keys) > 5 else ''}"

    lines = [f"checkpoint {file} does not match the HunyuanVideo VAE ({len(expected)} tensors expected, "
             f"{len(sd)} found; official names as in models/hunyuan_vae/keys.py):"]
    if missing:
        lines.append(f"  {len(missing)} missing: {head(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected: {head(unexpected)}")
    if wrong:
        lines.append(
            f"  {len(wrong)} with another shape: "
            + head(wrong, lambda k: f"{k} {tuple(sd[k].shape)} (expected {expected[k]})")
        )
    lines.append(f"  expected keys look like: {head(sorted(expected))}")
    raise CheckpointMismatch("\n".join(lines))


__all__ = ["HunyuanVideoVAE", "CheckpointMismatch"]
