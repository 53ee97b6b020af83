"""FP8 (e4m3) matmuls for the MMDiT's big linears: inference (`quantize_fp8`) and training
(`convert_to_fp8_training`, torchao's float8 training). Both convert the same linears (`fp8_linear_names`).

Inference:

Each linear y = x Wᵀ + b of the double/single blocks (q/k/v, proj, MLP in/out; the single blocks' q/k, v_mlp,
linear2) becomes

    W ≈ s_w · Q(W / s_w)        s_w = amax(|W|) / 448 per output row (or per tensor), fixed at conversion
    x ≈ s_x · Q(x / s_x)        s_x = amax(|x|) / 448 per token (or per tensor), computed at every call
    y = (s_x · s_wᵀ) ⊙ (Q(x) Q(W)ᵀ accumulated in fp32), rounded to x's dtype, + b

with Q = round to float8_e4m3fn (3 mantissa bits: relative rounding error ≤ 2⁻⁴ for normal values). On CUDA the
product runs through `torch._scaled_mm` (Hopper FP8 tensor cores); elsewhere, or with `emulate=True`, the same
quantised operands are dequantised to fp32 and multiplied with F.linear, so the quantisation is testable on CPU.
Norms, modulation, embedders and the final layer stay in the model's dtype.

Row scales make a fused q/k/v GEMM numerically identical to separate ones (each output row keeps its own scale,
each token its own), so the projections are converted one by one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
E4M3_UNIT_ROUNDOFF = 2.0**-4  # 3 mantissa bits, round to nearest
E4M3_SUBNORMAL_HALF_SPACING = 2.0**-10  # absolute rounding error bound below the normal range (2⁻⁶), in units of s
GRANULARITIES = ("row", "tensor")


def quantize_e4m3(x: torch.Tensor, granularity: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (Q(x / s) in float8_e4m3fn, s in fp32) with s = amax / 448 per row ([..., 1]) or per tensor
    ([]); an all-zero row gets s = tiny (its codes are zero, so any s gives the exact zeros back)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True) if granularity == "row" else xf.abs().amax()
    scale = amax.clamp(min=1e-12) / E4M3_MAX
    # The clamp only guards rounding of the amax element itself; by construction |x / s| <= 448.
    q = (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def dequantize_e4m3(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


class FP8Linear(nn.Module):
    """An nn.Linear with e4m3 weights (scaled per output row or per tensor) and dynamically scaled e4m3 inputs.

    `emulate`: None = `torch._scaled_mm` on CUDA inputs, fp32 emulation otherwise; True/False forces it.
    `fast_accum`: Hopper's faster FP8 accumulation (`use_fast_accum`), the usual choice for inference GEMMs.
    """

    def __init__(self, linear: nn.Linear, granularity: str = "row", emulate: bool | None = None,
                 fast_accum: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.granularity = granularity
        self.emulate = emulate
        self.fast_accum = fast_accum
        q, scale = quantize_e4m3(linear.weight.detach(), granularity)
        self.register_buffer("weight", q.contiguous())
        # [1, N] (row) or [] (tensor): the layout `_scaled_mm` takes for the second operand's scale.
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous() if granularity == "row" else scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, in fp32 [N, K]."""
        scale = self.weight_scale.t() if self.granularity == "row" else self.weight_scale
        return dequantize_e4m3(self.weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        xq, xs = quantize_e4m3(flat, self.granularity)
        emulate = (not x.is_cuda) if self.emulate is None else self.emulate
        if emulate:
            # Same operands as the kernel, exact products, fp32 sum; rounded to x's dtype like the kernel output.
            y = F.linear(dequantize_e4m3(xq, xs), self.dequantized_weight()).to(x.dtype)
        else:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=x.dtype,
                                 use_fast_accum=self.fast_accum)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"granularity={self.granularity}, emulate={self.emulate}")


def fp8_linear_names(model: nn.Module) -> list[str]:
    """The qualified names of the linears that FP8 replaces: the big matmuls of every double and single block."""
    names = []
    for i, block in enumerate(model.double_blocks):
        for stream in ("img", "txt"):
            names += [f"double_blocks.{i}.{stream}_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "proj")]
            names += [f"double_blocks.{i}.{stream}_mlp.0", f"double_blocks.{i}.{stream}_mlp.2"]
    for i, block in enumerate(model.single_blocks):
        names += [f"single_blocks.{i}.{p}" for p in ("q_proj", "k_proj", "v_mlp", "linear2")]
    return names


def quantize_fp8(model: nn.Module, granularity: str = "row", emulate: bool | None = None,
                 fast_accum: bool = True) -> nn.Module:
    """Replace the block linears of an MMDiT by FP8Linear in place (inference only; call after the model is on its
    final device and dtype, instead of `fuse_projections()`; `soraflow.training.parallel.mmdit.apply_compile` may follow).
    The bf16 weights of those linears are released, so the DiT's weight memory roughly halves."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    # Undo fuse_projections: its fast paths read the bf16 weights directly.
    for block in model.double_blocks:
        block.gelu_epilogue = False
        block.img_attn._fused = None
        block.txt_attn._fused = None
    for block in model.single_blocks:
        block._fused = None
    # Linears already converted, or with dims that are not multiples of 16, stay as they are.
    for name in sorted(fp8_convertible(model)):
        parent_name, child = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, child, FP8Linear(parent.get_submodule(child), granularity, emulate, fast_accum))
    model._soraflow_fp8 = granularity
    return model


def e4m3_matmul_error_bound(x: torch.Tensor, weight: torch.Tensor, granularity: str = "row") -> torch.Tensor:
    """Worst-case |FP8 linear - exact linear| per output element (before the final rounding to the output dtype).

    With x̂ᵢ = xᵢ + δᵢ, ŵᵢ = wᵢ + εᵢ and |δᵢ| ≤ max(u|xᵢ|, 2⁻¹⁰ s_x) (u = 2⁻⁴; the second term covers subnormal
    codes), the error of Σ x̂ᵢŵᵢ is at most Σ |δᵢ||wᵢ| + |xᵢ||εᵢ| + |δᵢ||εᵢ|.
    """
    xf, wf = x.float().reshape(-1, x.shape[-1]), weight.float()
    _, sx = quantize_e4m3(xf, granularity)
    _, sw = quantize_e4m3(wf, granularity)
    dx = torch.maximum(E4M3_UNIT_ROUNDOFF * xf.abs(), E4M3_SUBNORMAL_HALF_SPACING * sx.expand_as(xf))
    dw = torch.maximum(E4M3_UNIT_ROUNDOFF * wf.abs(), E4M3_SUBNORMAL_HALF_SPACING * sw.expand_as(wf))
    bound = dx @ wf.abs().t() + xf.abs() @ dw.t() + dx @ dw.t()
    return bound.view(*x.shape[:-1], weight.shape[0])


FP8_TRAINING_RECIPES = ("tensorwise", "rowwise")


def fp8_convertible(model: nn.Module) -> set[str]:
    """The names of `fp8_linear_names` that are nn.Linear with both dims multiples of 16 (FP8 tensor-core GEMMs
    need them); the one selection the inference and the training conversion share."""
    out = set()
    for name in fp8_linear_names(model):
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear) and not (layer.in_features % 16 or layer.out_features % 16):
            out.add(name)
    return out


def convert_to_fp8_training(model: nn.Module, recipe: str = "tensorwise", *, fsdp_all_gather: bool = False,
                            emulate: bool = False) -> nn.Module:
    """Swap the blocks' big linears for torchao's `Float8Linear` in place (training; call before the strategy
    wraps the model and before `apply_compile`).

    recipe "tensorwise": one dynamic scale per tensor for inputs, weights and output gradients (with
    `fsdp_all_gather`, FSDP2 all-gathers the weights already in float8); "rowwise": one scale per row of each
    GEMM operand (torchao's "rowwise" recipe; no float8 all-gather). The master weights stay as they were
    (Float8Linear keeps nn.Linear's `weight` and `bias`), so state-dict keys and values do not change and a
    checkpoint loads into a bf16 or an FP8 model alike. `emulate`: torchao computes the float8 products in
    higher precision from the same quantised operands (CPU tests).
    """
    import dataclasses

    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    if recipe not in FP8_TRAINING_RECIPES:
        raise ValueError(f"model.fp8 must be one of {FP8_TRAINING_RECIPES} (or empty for off), got {recipe!r}")
    if recipe == "tensorwise":
        config = Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp_all_gather, emulate=emulate)
    else:
        config = dataclasses.replace(Float8LinearConfig.from_recipe_name("rowwise"), emulate=emulate)
    names = fp8_convertible(model)
    convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn in names)
    model._soraflow_fp8_training = recipe
    # FSDP2's float8 all-gather wants the weights' scales computed once per step, after the optimizer step.
    model._soraflow_fp8_fsdp_scales = recipe == "tensorwise" and fsdp_all_gather
    return model
