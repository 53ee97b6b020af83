"""MMDiT building blocks (docs/models.md#mmdit-blocks). Attribute names give the official state-dict keys
(docs/models.md#mmdit-checkpoint-keys)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attention as attn_mod
from .rope import apply_rope


@torch.library.custom_op("soraflow::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias) with the GELU in the cuBLASLt GEMM epilogue on CUDA (inference only).

    A custom op so torch.compile keeps it as one extern GEMM instead of decomposing it into GEMM + GELU pass.
    """
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    if x.is_cuda:
        out = torch._addmm_activation(bias, flat, weight.t(), use_gelu=True)
    else:
        out = F.gelu(F.linear(flat, weight, bias), approximate="tanh")
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _linear_gelu_tanh_fake(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10_000, time_factor: float = 1000.0):
    """Sinusoidal embedding of 1000*t, cos half first (docs/models.md#mmdit-blocks).

    The product 1000*t is taken in t's own dtype (bf16 in training and inference), which rounds it exactly as the
    reference does; the sinusoid itself is computed in fp32.
    """
    t = (t * time_factor).float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, "llama" casting: normalise in fp32, cast back, then x scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class Modulation(nn.Module):
    """lin(silu(vec)) chunked into (shift, scale, gate) x (1 or 2)."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return out[:3], (out[3:] if self.multiplier == 6 else None)


def modulate(x, shift, scale, eps: float = 1e-6):
    return (1 + scale) * F.layer_norm(x, x.shape[-1:], eps=eps) + shift


def _heads(x, num_heads):
    """[B, L, H*D] -> [B, H, L, D]. Head dim spelled out so an empty stream (L = 0, sequence parallel) works."""
    b, l, hd = x.shape
    return x.view(b, l, num_heads, hd // num_heads).transpose(1, 2)


class SelfAttention(nn.Module):
    """The per-stream attention weights of a double block (the attention itself runs on the joint sequence)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)
        self.concat_projections = True  # see `project`

    def qkv(self, x):
        fused = getattr(self, "_fused", None)
        if fused is not None:
            qkv = F.linear(x, *fused).chunk(3, dim=-1)
        else:
            qkv = project(x, [self.q_proj, self.k_proj, self.v_proj], self.concat_projections)
        q, k, v = (_heads(t, self.num_heads) for t in qkv)
        q, k = self.norm(q, k, v)
        return q, k, v

    def fuse_projections(self) -> None:
        _fuse_linears(self, [self.q_proj, self.k_proj, self.v_proj])

    def _apply(self, fn, *args, **kwargs):
        self._fused = None  # moving or casting the weights breaks the fused views; fuse again afterwards
        return super()._apply(fn, *args, **kwargs)


def project(x: torch.Tensor, linears: list[nn.Linear], concat: bool = True) -> tuple[torch.Tensor, ...]:
    """The outputs of several Linears over the same input, as one GEMM over their concatenated weights
    (`concat=False` runs them one by one; the blocks' `concat_projections` attribute, which benchmarks flip).

    Training path: the weights are concatenated per call (a copy of the weights, small next to the activations),
    autograd hands each weight its slice of the gradient, and the input's gradient comes out of one GEMM rather
    than a sum of several. One wide GEMM also fills the GPU's waves better than several narrow ones.
    """
    biases = [m.bias for m in linears]
    plain = all(type(m) is nn.Linear for m in linears)  # e.g. FP8Linear keeps its own GEMM
    same_bias = all(b is None for b in biases) or all(b is not None for b in biases)
    if not (concat and plain and same_bias):
        return tuple(m(x) for m in linears)
    bias = None if biases[0] is None else torch.cat(biases)
    out = F.linear(x, torch.cat([m.weight for m in linears]), bias)
    return out.split([m.out_features for m in linears], dim=-1)


def linear_k_aligned(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """linear(x), with the reduction dim zero-padded to a multiple of 8 on CUDA.

    cuBLAS needs 16-byte-aligned rows for its fast bf16 kernels; an in_features of 68 (the I2V condition token)
    otherwise falls back to a slow align-1 kernel. Zero columns add nothing to the product.
    """
    k = linear.in_features
    pad = -k % 8
    if not x.is_cuda or pad == 0:
        return linear(x)
    return F.linear(F.pad(x, (0, pad)), F.pad(linear.weight, (0, pad)), linear.bias)


def _fuse_linears(owner: nn.Module, linears: list[nn.Linear]) -> None:
    """Inference fast path: one GEMM instead of several over the same input.

    The weights are copied into one contiguous tensor and each Linear's parameter becomes a view of its rows, so
    the state dict (keys, values) is unchanged and no memory is added.
    """
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = all(m.bias is not None for m in linears)
    bias = torch.cat([m.bias.detach() for m in linears]) if has_bias else None
    row = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = nn.Parameter(weight[row : row + n], requires_grad=m.weight.requires_grad)
        if has_bias:
            m.bias = nn.Parameter(bias[row : row + n], requires_grad=m.bias.requires_grad)
        row += n
    owner._fused = (weight, bias)


def _run_mlp(mlp: nn.Sequential, x: torch.Tensor, gelu_epilogue: bool) -> torch.Tensor:
    if gelu_epilogue and not torch.is_grad_enabled():
        return mlp[2](linear_gelu_tanh(x, mlp[0].weight, mlp[0].bias))
    return mlp(x)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def rope_attention(q, k, v, pe, layout: str, attn_fn=None):
    """RoPE on q, k then attention. `attn_fn` (same contract as `attention.attention`) replaces the default one,
    e.g. a sequence-parallel attention; it is a call argument, so checkpoint recomputation sees it too."""
    cos, sin = pe
    fn = attn_mod.attention if attn_fn is None else attn_fn
    return fn(apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout), v)


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool, rope_layout: str):
        super().__init__()
        self.rope_layout = rope_layout
        self.gelu_epilogue = False  # inference fast path, set by MMDiT.fuse_projections()
        self.img_mod = Modulation(dim, double=True)
        self.img_attn = SelfAttention(dim, num_heads, qkv_bias)
        self.img_mlp = _mlp(dim, mlp_hidden)
        self.txt_mod = Modulation(dim, double=True)
        self.txt_attn = SelfAttention(dim, num_heads, qkv_bias)
        self.txt_mlp = _mlp(dim, mlp_hidden)

    def forward(self, img, txt, vec, pe, attn_fn=None):
        (i_shift1, i_scale1, i_gate1), (i_shift2, i_scale2, i_gate2) = self.img_mod(vec)
        (t_shift1, t_scale1, t_gate1), (t_shift2, t_scale2, t_gate2) = self.txt_mod(vec)

        img_q, img_k, img_v = self.img_attn.qkv(modulate(img, i_shift1, i_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv(modulate(txt, t_shift1, t_scale1))
        # Text first along the sequence (docs/models.md#mmdit-blocks, double block).
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        o = rope_attention(q, k, v, pe, self.rope_layout, attn_fn)
        n_txt = txt.shape[1]
        txt_o, img_o = o[:, :n_txt], o[:, n_txt:]

        img = img + i_gate1 * self.img_attn.proj(img_o)
        img = img + i_gate2 * _run_mlp(self.img_mlp, modulate(img, i_shift2, i_scale2), self.gelu_epilogue)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_o)
        txt = txt + t_gate2 * _run_mlp(self.txt_mlp, modulate(txt, t_shift2, t_scale2), self.gelu_epilogue)
        return img, txt


class SingleStreamBlock(nn.Module):
    """FLUX "parallel" block: attention and MLP share the input projection and the output projection."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, rope_layout: str):
        super().__init__()
        self.num_heads = num_heads
        self.dim = dim
        self.mlp_hidden = mlp_hidden
        self.rope_layout = rope_layout
        # q/k always carry a bias here, independent of qkv_bias (docs/models.md#mmdit-blocks).
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_mlp = nn.Linear(dim, dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // num_heads)
        self.modulation = Modulation(dim, double=False)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.concat_projections = True  # see `project`

    def forward(self, x, vec, pe, attn_fn=None):
        (shift, scale, gate), _ = self.modulation(vec)
        a = modulate(x, shift, scale)
        d = self.dim
        fused = getattr(self, "_fused", None)
        fast = fused is not None and not torch.is_grad_enabled()
        if fast:
            # Inference: q/k/v in one GEMM; the MLP input GEMM with the GELU in its epilogue.
            w, b = fused
            q, k, v = F.linear(a, w[: 3 * d], b[: 3 * d]).chunk(3, dim=-1)
            h_act = linear_gelu_tanh(a, w[3 * d :], b[3 * d :])
        else:
            q, k, v_h = project(a, [self.q_proj, self.k_proj, self.v_mlp], self.concat_projections)
            v, h = torch.split(v_h, [d, self.mlp_hidden], dim=-1)
            h_act = self.mlp_act(h)
        q, k, v = (_heads(t, self.num_heads) for t in (q, k, v))
        q, k = self.norm(q, k, v)
        o = rope_attention(q, k, v, pe, self.rope_layout, attn_fn)
        if fast:
            # linear2(cat(o, h_act)) as two products over its weight's column blocks: no concatenation pass.
            w2 = self.linear2.weight
            out = F.linear(o, w2[:, :d], self.linear2.bias) + F.linear(h_act, w2[:, d:])
        else:
            out = self.linear2(torch.cat((o, h_act), dim=-1))
        return x + gate * out

    def fuse_projections(self) -> None:
        _fuse_linears(self, [self.q_proj, self.k_proj, self.v_mlp])

    def _apply(self, fn, *args, **kwargs):
        self._fused = None
        return super()._apply(fn, *args, **kwargs)


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(x, shift, scale))
