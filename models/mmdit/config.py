"""MMDiT configurations. Field names follow Open-Sora's `model=dict(...)` (docs/models.md#mmdit-configurations)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class MMDiTConfig:
    in_channels: int = 64  # packed token width = latent channels x patch^2
    patch_size: int = 2  # spatial; temporal patch is always 1
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    mlp_ratio: float = 4.0
    axes_dim: tuple[int, int, int] = (16, 56, 56)  # RoPE dims for (t, h, w); sum = head_dim
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = False
    vec_in_dim: int = 768  # CLIP-L pooled
    context_in_dim: int = 4096  # T5-XXL
    cond_embed: bool = True  # zero-initialised cond_in for image/video conditions
    # "rotate_half" is the released Open-Sora layout (Liger RoPE); "interleaved" is original FLUX.
    rope_layout: str = "rotate_half"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to head_dim {self.head_dim}")
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"every RoPE axis dim must be even, got {self.axes_dim}")
        if self.rope_layout not in ("rotate_half", "interleaved"):
            raise ValueError(f"rope_layout must be 'rotate_half' or 'interleaved', got {self.rope_layout!r}")
        if self.in_channels % (self.patch_size**2):
            raise ValueError(f"in_channels {self.in_channels} must be latent channels x patch_size^2")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @property
    def latent_channels(self) -> int:
        return self.in_channels // (self.patch_size**2)

    @property
    def cond_channels(self) -> int:
        """Width of a packed condition token: (mask + latent channels) x patch^2."""
        return (self.latent_channels + 1) * self.patch_size**2

    def with_overrides(self, **kw) -> "MMDiTConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


OPENSORA2_11B = MMDiTConfig(name="opensora2-11b")
# The high-compression model on Video DC-AE latents: 128 channels, patch 1 (docs/models.md#mmdit-configurations,
# #dit-on-dc-ae-latents-distill).
OPENSORA2_HC = MMDiTConfig(in_channels=128, patch_size=1, name="opensora2-hc")
# FLUX.1-dev as used for text-to-image-to-video (docs/models.md#text-to-image-to-video): guidance-embedded, no cond_in.
FLUX1_DEV = MMDiTConfig(guidance_embed=True, cond_embed=False, name="flux1-dev")
# CPU tests and the local pipeline: same structure, tiny widths. context_in_dim matches the tiny T5.
TINY = MMDiTConfig(
    in_channels=64,  # 16 latent channels (the tiny HunyuanVideo VAE) x patch 2^2
    hidden_size=64,
    num_heads=4,
    depth=2,
    depth_single_blocks=2,
    axes_dim=(4, 6, 6),
    vec_in_dim=32,
    context_in_dim=32,
    name="tiny",
)
TINY_HC = TINY.with_overrides(in_channels=8, patch_size=1, name="tiny-hc")
# The one-GPU demo (`soraflow run --profile gpu`): 351M parameters (5 double + 10 single blocks, width 1024), the
# tiny text encoders' widths; "-hc" is the patch-1 model on the full Video DC-AE's 128 latent channels.
GPU_DEMO = TINY.with_overrides(hidden_size=1024, num_heads=16, depth=5, depth_single_blocks=10,
                               axes_dim=(16, 24, 24), name="gpu-demo")
GPU_DEMO_HC = GPU_DEMO.with_overrides(in_channels=128, patch_size=1, name="gpu-demo-hc")

CONFIGS: dict[str, MMDiTConfig] = {
    c.name: c for c in (OPENSORA2_11B, OPENSORA2_HC, FLUX1_DEV, TINY, TINY_HC, GPU_DEMO, GPU_DEMO_HC)
}


def get_config(name: str, **overrides) -> MMDiTConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown MMDiT config {name!r}; known: {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    return cfg.with_overrides(**overrides) if overrides else cfg
