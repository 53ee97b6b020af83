"""Building blocks of the Video DC-AE (docs/models.md#video-dc-ae), written so that module attribute names reproduce the
official state-dict keys of `opensora/models/dc_ae/**` (e.g. `main.conv1.conv.weight`, `op_list.0`).

Tensor layout is always [B, C, T, H, W]; every conv is 3D with zero padding symmetric in time (non-causal).
The two parameter-free shortcuts (`PixelUnshuffleChannelAveraging`, `ChannelDuplicatingPixelShuffle`) carry
the exact channel orders of the official code, because a loaded checkpoint depends on them:

* 3D unshuffle by r=2: output channel = c*8 + r_t*4 + r_h*2 + r_w
* 2D (per-frame) unshuffle: output channel = c*4 + r_h*2 + r_w   (torch `pixel_unshuffle` order)
* the shuffles are the exact inverses of the unshuffles.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "RMSNorm3d",
    "ConvLayer",
    "ResidualBlock",
    "OpSequential",
    "IdentityLayer",
    "ResBlock",
    "LiteMLA",
    "GLUMBConv",
    "EfficientViTBlock",
    "InterpolateConvUpSample",
    "PixelUnshuffleChannelAveraging",
    "ChannelDuplicatingPixelShuffle",
    "pixel_unshuffle_3d",
    "pixel_shuffle_3d",
    "pixel_unshuffle_2d_per_frame",
    "pixel_shuffle_2d_per_frame",
    "relu_linear_attention",
]


# --------------------------------------------------------------------------------------------------------
# Parameter-free reshuffles
# --------------------------------------------------------------------------------------------------------


def pixel_unshuffle_3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*r^3, T/r, H/r, W/r]; channel c*r^3 + r_t*r^2 + r_h*r + r_w."""
    b, c, t, h, w = x.shape
    if t % r or h % r or w % r:
        raise ValueError(f"pixel_unshuffle_3d needs T, H, W divisible by {r}; got shape {tuple(x.shape)}")
    x = x.reshape(b, c, t // r, r, h // r, r, w // r, r)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b c rt rh rw t h w
    return x.reshape(b, c * r**3, t // r, h // r, w // r)


def pixel_shuffle_3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of `pixel_unshuffle_3d`: [B, C*r^3, T, H, W] -> [B, C, T*r, H*r, W*r]."""
    b, c, t, h, w = x.shape
    if c % r**3:
        raise ValueError(f"pixel_shuffle_3d needs channels divisible by {r**3}; got {c}")
    x = x.reshape(b, c // r**3, r, r, r, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # b c t rt h rh w rw
    return x.reshape(b, c // r**3, t * r, h * r, w * r)


def pixel_unshuffle_2d_per_frame(x: torch.Tensor, r: int) -> torch.Tensor:
    """Spatial-only unshuffle of each frame: [B, C, T, H, W] -> [B, C*r^2, T, H/r, W/r]; channel c*r^2 + r_h*r + r_w
    (the order of `F.pixel_unshuffle`)."""
    if r == 1:
        return x
    b, c, t, h, w = x.shape
    if h % r or w % r:
        raise ValueError(f"pixel unshuffle needs H, W divisible by {r}; got shape {tuple(x.shape)}")
    x = x.reshape(b, c, t, h // r, r, w // r, r).permute(0, 1, 4, 6, 2, 3, 5)  # b c rh rw t h w
    return x.reshape(b, c * r * r, t, h // r, w // r)


def pixel_shuffle_2d_per_frame(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of `pixel_unshuffle_2d_per_frame`."""
    if r == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c // (r * r), r, r, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)  # b c t h rh w rw
    return x.reshape(b, c // (r * r), t, h * r, w * r)


class PixelUnshuffleChannelAveraging(nn.Module):
    """Downsample shortcut: pixel-unshuffle by `factor` (3D when `temporal` and T > 1, else per frame), then
    average consecutive groups of `in*factor^k/out` channels down to `out` channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, temporal: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.factor, self.temporal = in_channels, out_channels, factor, temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal and x.shape[2] != 1:
            x = pixel_unshuffle_3d(x, self.factor)
        else:
            x = pixel_unshuffle_2d_per_frame(x, self.factor)
        b, c, t, h, w = x.shape
        if c % self.out_channels:
            raise ValueError(f"cannot average {c} channels into {self.out_channels}")
        return x.reshape(b, self.out_channels, c // self.out_channels, t, h, w).mean(dim=2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, factor={self.factor}, temporal={self.temporal}"


class ChannelDuplicatingPixelShuffle(nn.Module):
    """Upsample shortcut: repeat each channel `out*factor^k/in` times (`repeat_interleave`), then
    pixel-shuffle by `factor` (3D when `temporal` and T > 1, else per frame). No parameters."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, temporal: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.factor, self.temporal = in_channels, out_channels, factor, temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three_d = self.temporal and x.shape[2] != 1
        k = 3 if three_d else 2
        total = self.out_channels * self.factor**k
        if total % self.in_channels:
            raise ValueError(f"cannot duplicate {self.in_channels} channels into {total}")
        x = x.repeat_interleave(total // self.in_channels, dim=1)
        return pixel_shuffle_3d(x, self.factor) if three_d else pixel_shuffle_2d_per_frame(x, self.factor)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, factor={self.factor}, temporal={self.temporal}"


# --------------------------------------------------------------------------------------------------------
# Basic layers
# --------------------------------------------------------------------------------------------------------


class RMSNorm3d(nn.Module):
    """RMS norm over the channel dim of [B, C, T, H, W]; statistics in fp32; affine weight *and* bias."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = (xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + self.eps)).to(x.dtype)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class IdentityLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvLayer(nn.Module):
    """Zero-padded ("same", symmetric in time) 3D conv -> optional RMSNorm3d -> optional activation.

    The zero padding is applied with `F.pad` before an unpadded conv, as the released model does. Besides
    matching it, this avoids a CPU bug: torch's bf16 conv3d with the padding inside the conv returns wrong,
    run-to-run varying values on a one-frame input with 3 input channels (the DC-AE's `project_in` on an
    image), see docs/fidelity.md.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int, int] = 1,
        groups: int = 1,
        use_bias: bool = False,
        norm: bool = False,
        act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("ConvLayer needs an odd kernel size")
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=use_bias,
        )
        self.pad = (kernel_size // 2,) * 6  # (W, W, H, H, T, T)
        self.norm = RMSNorm3d(out_channels) if norm else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class ResidualBlock(nn.Module):
    """main(x) + shortcut(x) (`shortcut=None` -> main(x) only)."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.main(x)
        return self.main(x) + self.shortcut(x)


class OpSequential(nn.Module):
    """Sequential container whose children live in `op_list` (official key layout)."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


# --------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """conv k3 (bias) -> SiLU -> conv k3 (no bias) -> RMSNorm3d. Wrap in ResidualBlock(., Identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, use_bias=True, act=nn.SiLU())
        self.conv2 = ConvLayer(channels, channels, 3, use_bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def relu_linear_attention(qkv: torch.Tensor, head_dim: int, eps: float = 1e-15) -> torch.Tensor:
    """ReLU-kernel linear attention of the official LiteMLA, computed in fp32.

    `qkv` is [B, n_heads*3*head_dim, T, H, W]; each head owns `3*head_dim` consecutive channels laid out
    [q | k | v]. out = (V·relu(K)^T)·relu(Q) / ((1·relu(K)^T)·relu(Q) + eps), tokens = all T*H*W positions.
    Returns [B, n_heads*head_dim, T, H, W] in the input dtype.
    """
    b, _, t, h, w = qkv.shape
    dtype = qkv.dtype
    qkv = qkv.float().reshape(b, -1, 3 * head_dim, t * h * w)
    q = F.relu(qkv[:, :, :head_dim])
    k = F.relu(qkv[:, :, head_dim : 2 * head_dim])
    v = qkv[:, :, 2 * head_dim :]
    v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)  # extra row of ones -> normaliser
    vk = torch.matmul(v, k.transpose(-1, -2))  # [B, heads, d+1, d]
    out = torch.matmul(vk, q)  # [B, heads, d+1, N]
    out = out[:, :, :-1] / (out[:, :, -1:] + eps)
    return out.reshape(b, -1, t, h, w).to(dtype)


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (EfficientViT) in 3D.

    qkv: 1x1 conv C->3C (no bias); aggreg (one per scale): depthwise s×s×s conv (pad s//2) then grouped 1x1
    conv (groups 3*heads), no bias; concat -> (1+len(scales))*3C; ReLU linear attention per head of dim
    `head_dim`; proj: 1x1 conv -> C (no bias) + RMSNorm3d.
    """

    def __init__(self, channels: int, head_dim: int = 32, scales: tuple[int, ...] = (5,), eps: float = 1e-15):
        super().__init__()
        heads = channels // head_dim
        if heads < 1:
            raise ValueError(f"LiteMLA: channels {channels} < head_dim {head_dim}")
        total = heads * head_dim
        self.head_dim, self.eps = head_dim, eps
        self.qkv = ConvLayer(channels, 3 * total, 1, use_bias=False)
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv3d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                    nn.Conv3d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
                )
                for s in scales
            ]
        )
        self.proj = ConvLayer(total * (1 + len(scales)), channels, 1, use_bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        out = relu_linear_attention(qkv, self.head_dim, self.eps)
        return self.proj(out)


class GLUMBConv(nn.Module):
    """1x1 C->2·mid (bias) + SiLU -> depthwise k3 (bias) -> split x, g -> x·SiLU(g) -> 1x1 mid->C + RMSNorm3d."""

    def __init__(self, channels: int, expand_ratio: float = 4) -> None:
        super().__init__()
        mid = round(channels * expand_ratio)
        self.glu_act = nn.SiLU()
        self.inverted_conv = ConvLayer(channels, 2 * mid, 1, use_bias=True, act=nn.SiLU())
        self.depth_conv = ConvLayer(2 * mid, 2 * mid, 3, groups=2 * mid, use_bias=True)
        self.point_conv = ConvLayer(mid, channels, 1, use_bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depth_conv(self.inverted_conv(x))
        x, gate = torch.chunk(x, 2, dim=1)
        return self.point_conv(x * self.glu_act(gate))


class EfficientViTBlock(nn.Module):
    """EViTS5_GLU: Residual(LiteMLA with scale 5) then Residual(GLUMBConv, expand 4)."""

    def __init__(self, channels: int, head_dim: int = 32, scales: tuple[int, ...] = (5,), expand_ratio: float = 4):
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(channels, head_dim, scales), IdentityLayer())
        self.local_module = ResidualBlock(GLUMBConv(channels, expand_ratio), IdentityLayer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class InterpolateConvUpSample(nn.Module):
    """Nearest ×2 in H, W (and T when `temporal` and T > 1), then a k3 conv (bias)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2, temporal: bool = False) -> None:
        super().__init__()
        self.factor, self.temporal = factor, temporal
        self.conv = ConvLayer(in_channels, out_channels, 3, use_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft = self.factor if (self.temporal and x.shape[2] != 1) else 1
        x = F.interpolate(x, scale_factor=(ft, self.factor, self.factor), mode="nearest")
        return self.conv(x)
