"""Configuration of the frozen HunyuanVideo VAE (docs/models.md#hunyuanvideo-vae) and of its tiled encode/decode.

`HunyuanVAEConfig.full()` is the released model (`AutoEncoder3DConfig` in Open-Sora's
`opensora/models/hunyuan_vae/autoencoder_kl_causal_3d.py`); `HunyuanVAEConfig.tiny()` is a CPU test size
with the same module tree (4 blocks, same down/up-sampling rules), only narrower.

`TilingConfig` holds the three numbers Open-Sora configures (`sample_size`, `sample_tsize`,
`tile_overlap_factor`) and derives every stride / blend / keep length the way Open-Sora does (`int()`
truncation), so that the full-size defaults give exactly the numbers of docs/models.md#hunyuanvideo-vae:

* spatial encode: 256-px tiles, stride 192 px, blend 8 latent px, keep 24 latent px;
* spatial decode: 32-latent tiles, stride 24 latent px, blend 64 px, keep 192 px;
* temporal encode: 65-frame tiles (64+1), stride 48 frames, blend 4 latent frames, keep 12 (13 first tile);
* temporal decode: 17-latent tiles (16+1), stride 12 latents, blend 16 frames, keep 48 (49 first tile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class TilingConfig:
    spatial: bool = True  # ON in every Open-Sora diffusion config (docs/models.md#hunyuanvideo-vae)
    temporal: bool = False  # OFF in the diffusion configs, ON in configs/vae/inference/hunyuanvideo_vae.py
    tile_sample_size: int = 256  # pixels (Open-Sora `sample_size`)
    tile_sample_frames: int = 64  # pixel frames (Open-Sora `sample_tsize`); tiles read 64+1 frames
    overlap: float = 0.25  # Open-Sora `tile_overlap_factor`

    def resolve(self, spatial_compression: int, time_compression: int) -> "TilingPlan":
        """Derive strides / blends / keeps and check that they tile the output exactly."""
        s, tc, ov = spatial_compression, time_compression, self.overlap
        if not 0.0 <= ov < 1.0:
            raise ValueError(f"tiling overlap must be in [0, 1); got {ov}")
        if self.tile_sample_size % s or self.tile_sample_size <= 0:
            raise ValueError(
                f"tile_sample_size must be a positive multiple of the spatial compression {s}; got {self.tile_sample_size}"
            )
        if self.tile_sample_frames % tc or self.tile_sample_frames <= 0:
            raise ValueError(
                f"tile_sample_frames must be a positive multiple of the time compression {tc}; "
                f"got {self.tile_sample_frames}"
            )
        lat_size = self.tile_sample_size // s
        lat_frames = self.tile_sample_frames // tc
        plan = TilingPlan(
            spatial=self.spatial,
            temporal=self.temporal,
            enc_tile_px=self.tile_sample_size,
            enc_stride_px=int(self.tile_sample_size * (1 - ov)),
            enc_blend_lat=int(lat_size * ov),
            enc_keep_lat=lat_size - int(lat_size * ov),
            dec_tile_lat=lat_size,
            dec_stride_lat=int(lat_size * (1 - ov)),
            dec_blend_px=int(self.tile_sample_size * ov),
            dec_keep_px=self.tile_sample_size - int(self.tile_sample_size * ov),
            enc_tile_frames=self.tile_sample_frames,
            enc_stride_frames=int(self.tile_sample_frames * (1 - ov)),
            enc_blend_latf=int(lat_frames * ov),
            enc_keep_latf=lat_frames - int(lat_frames * ov),
            dec_tile_latf=lat_frames,
            dec_stride_latf=int(lat_frames * (1 - ov)),
            dec_blend_frames=int(self.tile_sample_frames * ov),
            dec_keep_frames=self.tile_sample_frames - int(self.tile_sample_frames * ov),
        )
        # The tiles only reassemble into exactly H/s (or T_lat) outputs if keep * compression == stride.
        checks = [
            ("spatial encode", plan.enc_keep_lat * s, plan.enc_stride_px),
            ("spatial decode", plan.dec_stride_lat * s, plan.dec_keep_px),
            ("temporal encode", plan.enc_keep_latf * tc, plan.enc_stride_frames),
            ("temporal decode", plan.dec_stride_latf * tc, plan.dec_keep_frames),
        ]
        for name, a, b in checks:
            if a != b or b <= 0:
                raise ValueError(
                    f"{name} tiling with tile_sample_size={self.tile_sample_size}, "
                    f"tile_sample_frames={self.tile_sample_frames}, overlap={ov} does not tile evenly "
                    f"(kept {a} vs stride {b}); pick sizes whose stride is a multiple of the compression"
                )
        return plan


@dataclass(frozen=True)
class TilingPlan:
    spatial: bool
    temporal: bool
    enc_tile_px: int
    enc_stride_px: int
    enc_blend_lat: int
    enc_keep_lat: int
    dec_tile_lat: int
    dec_stride_lat: int
    dec_blend_px: int
    dec_keep_px: int
    enc_tile_frames: int
    enc_stride_frames: int
    enc_blend_latf: int
    enc_keep_latf: int
    dec_tile_latf: int
    dec_stride_latf: int
    dec_blend_frames: int
    dec_keep_frames: int


@dataclass(frozen=True)
class HunyuanVAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder; decoder up blocks use layers_per_block + 1
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.476986
    shift_factor: float = 0.0
    time_compression: int = 4
    spatial_compression: int = 8
    tiling: TilingConfig = field(default_factory=TilingConfig)

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        n = len(self.block_out_channels)
        if self.time_compression != 4:
            raise ValueError(f"only time_compression 4 is supported (HunyuanVideo VAE); got {self.time_compression}")
        k = int(math.log2(self.spatial_compression)) if self.spatial_compression > 0 else -1
        if self.spatial_compression <= 0 or 2**k != self.spatial_compression or k > n - 1:
            raise ValueError(
                f"spatial_compression must be a power of two with at most {n - 1} doublings for {n} blocks; "
                f"got {self.spatial_compression}"
            )
        if n < 3:
            raise ValueError(f"need at least 3 blocks for 4x temporal compression; got block_out_channels of length {n}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"every block width must be divisible by norm_num_groups={self.norm_num_groups}; "
                    f"got block_out_channels={self.block_out_channels}"
                )

    @classmethod
    def full(cls, **overrides) -> "HunyuanVAEConfig":
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "HunyuanVAEConfig":
        base = cls(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4)
        return replace(base, **overrides)

    @classmethod
    def named(cls, name: str) -> "HunyuanVAEConfig":
        """A config by the name the trainer writes into an export's metadata (`config`)."""
        if name not in NAMED_CONFIGS:
            raise ValueError(f"unknown HunyuanVideo VAE config {name!r}; known: {sorted(NAMED_CONFIGS)}")
        return NAMED_CONFIGS[name]()

    # --- the per-block down/up-sampling rules (docs/models.md#hunyuanvideo-vae), shared by the key rules and the tests
    # ---
    def down_strides(self) -> list[tuple[int, int, int] | None]:
        """(t, h, w) stride of encoder block i's downsampler, or None when the block has none."""
        n = len(self.block_out_channels)
        n_sp = int(math.log2(self.spatial_compression))
        n_t = int(math.log2(self.time_compression))
        out = []
        for i in range(n):
            sp = i < n_sp
            tm = i >= n - 1 - n_t and i != n - 1
            out.append((2 if tm else 1, 2 if sp else 1, 2 if sp else 1) if (sp or tm) else None)
        return out

    def up_factors(self) -> list[tuple[int, int, int] | None]:
        """(t, h, w) factor of decoder up block i's upsampler (same rule as the encoder), or None."""
        return self.down_strides()

    def diffusers_kwargs(self) -> dict:
        """Arguments for diffusers' `AutoencoderKLHunyuanVideo`."""
        n = len(self.block_out_channels)
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            latent_channels=self.latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * n,
            up_block_types=("HunyuanVideoUpBlock3D",) * n,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            act_fn=self.act_fn,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
            spatial_compression_ratio=self.spatial_compression,
            temporal_compression_ratio=self.time_compression,
            mid_block_add_attention=self.mid_block_add_attention,
        )


# Named configs: "hunyuan-vae" is the released model; "hunyuan-vae-tiny" the CPU test size and the `make demo`
# autoencoder (4x8x8); "hunyuan-vae-tiny-s4" the same tiny widths compressing 4x4x4 (time x height x width).
NAMED_CONFIGS = {
    "hunyuan-vae": HunyuanVAEConfig.full,
    "hunyuan-vae-tiny": HunyuanVAEConfig.tiny,
    "hunyuan-vae-tiny-s4": lambda: HunyuanVAEConfig.tiny(spatial_compression=4),
    # the one-GPU demo's VAE: the released module tree at half width (62M parameters), 4x8x8, 16 channels
    "hunyuan-vae-half": lambda: HunyuanVAEConfig.full(block_out_channels=(64, 128, 256, 256)),
}


def config_for_weights(path, tiny: bool) -> HunyuanVAEConfig:
    """The config an export names in its safetensors metadata (`config`), else tiny/full by `tiny`."""
    name = None
    if path is not None:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                name = (f.metadata() or {}).get("config")
        except Exception:  # noqa: BLE001 - not a single safetensors file (e.g. a folder): the default below
            name = None
    if name in NAMED_CONFIGS:
        return NAMED_CONFIGS[name]()
    return HunyuanVAEConfig.tiny() if tiny else HunyuanVAEConfig.full()
