"""Loading MMDiT weights: the official Open-Sora 2.0 checkpoint (strict) and FLUX-layout checkpoints.

Official (`Open_Sora_v2.safetensors`): split q/k/v, rotate-half RoPE row order, keys as
docs/models.md#mmdit-checkpoint-keys, loads as is.
FLUX layout (`flux1-dev.safetensors`): fused `qkv` / `linear1`, interleaved RoPE row order, `guidance_in`.
`convert_flux_state_dict` splits the fused projections and permutes each head's q/k rows (and biases and
QK-norm scales) from interleaved to rotate-half order (docs/models.md#mmdit-3d-rope), so both load into the same module
tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import MMDiTConfig
from .rope import rotate_half_permutation


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model: lists what is missing, unexpected or of another shape."""


def _safetensors_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [p / n for n in names]
        files = sorted(p.glob("*.safetensors"))
        if files:
            return files
        raise FileNotFoundError(f"no *.safetensors file in the weights directory {p}")
    raise FileNotFoundError(f"weights not found: {p} (expected a .safetensors file or a directory holding one)")


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(path):
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as handle:
                for key in handle.keys():
                    out[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read safetensors file {f}: {exc}") from exc
    return out


def _preview(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, allow_missing=()):
    """Raise CheckpointMismatch naming missing keys, unexpected keys and shape mismatches."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = set(expected) - set(state) - set(allow_missing)
    unexpected = set(state) - set(expected)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or shapes):
        return
    cfg = getattr(model, "config", None)
    lines = [f"checkpoint {source} does not fit model config {getattr(cfg, 'name', type(model).__name__)}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches: " + "; ".join(shapes[:5]))
        if "img_in.weight" in state and cfg is not None:
            lines.append(
                f"  (img_in takes {state['img_in.weight'].shape[1]} input channels in the checkpoint, "
                f"{cfg.in_channels} in the model: is this a checkpoint of another config?)"
            )
    raise CheckpointMismatch("\n".join(lines))


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    on_meta = any(p.is_meta for p in model.parameters())
    ref = next(model.parameters())
    if on_meta:
        state = {k: v.to(ref.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=strict, assign=on_meta)


def load_mmdit_checkpoint(model: torch.nn.Module, path: str | Path, strict: bool = True) -> torch.nn.Module:
    """Load an official-layout checkpoint (`Open_Sora_v2.safetensors` or the DC-AE variant)."""
    state = read_safetensors(path)
    check_state_dict(model, state, str(path)) if strict else None
    _assign(model, state, strict)
    return model


def convert_flux_state_dict(state: dict[str, torch.Tensor], config: MMDiTConfig) -> dict[str, torch.Tensor]:
    """FLUX layout -> soraflow/Open-Sora layout (split q/k/v, rotate-half q/k row order)."""
    d, hd = config.hidden_size, config.head_dim
    perm = rotate_half_permutation(hd)

    def permute_rows(t: torch.Tensor) -> torch.Tensor:
        # Rows are grouped per head (H*D); permute the D rows of every head the same way.
        return t.reshape(config.num_heads, hd, *t.shape[1:])[:, perm].reshape(t.shape)

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("guidance_in.") and not config.guidance_embed:
            # Open-Sora drops FLUX's distilled-guidance embedder (docs/models.md#mmdit-initialisation-from-flux)
            continue
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            prefix, kind = key.rsplit(".qkv.", 1)
            q, k, v = value.split(d, dim=0)
            out[f"{prefix}.q_proj.{kind}"] = permute_rows(q)
            out[f"{prefix}.k_proj.{kind}"] = permute_rows(k)
            out[f"{prefix}.v_proj.{kind}"] = v
        elif ".linear1." in key:
            prefix, kind = key.split(".linear1.")
            q, k, v_mlp = value.split([d, d, value.shape[0] - 2 * d], dim=0)
            out[f"{prefix}.q_proj.{kind}"] = permute_rows(q)
            out[f"{prefix}.k_proj.{kind}"] = permute_rows(k)
            out[f"{prefix}.v_mlp.{kind}"] = v_mlp
        elif key.endswith(("query_norm.scale", "key_norm.scale")):
            out[key] = value[perm]
        else:
            out[key] = value
    return out


def load_flux_checkpoint(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Initialise from FLUX weights (stage 1, docs/models.md#mmdit-initialisation-from-flux). cond_in stays
    zero-initialised when absent."""
    if model.config.rope_layout != "rotate_half":
        raise ValueError("load_flux_checkpoint converts to the rotate-half layout; build the model with it")
    state = convert_flux_state_dict(read_safetensors(path), model.config)
    allow = [k for k in model.state_dict() if k.startswith("cond_in.")]
    check_state_dict(model, state, str(path), allow_missing=allow)
    if any(p.is_meta for p in model.parameters()) and allow:
        ref = next(model.parameters())
        state.update({k: torch.zeros(model.state_dict()[k].shape, dtype=ref.dtype) for k in allow})
    _assign(model, state, strict=not allow)
    if allow and not any(p.is_meta for p in model.parameters()):
        model.zero_init_cond()
    return model


def build_mmdit(
    config: MMDiTConfig,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    weights_layout: str = "opensora",
):
    """Build an MMDiT in `dtype` on `device`: from a checkpoint (no random init pass) or random weights."""
    from .model import MMDiT

    if weights is None:
        with torch.device(device):
            model = MMDiT(config)
        return model.to(dtype)
    with torch.device("meta"):
        model = MMDiT(config).to(dtype)
    if weights_layout == "opensora":
        load_mmdit_checkpoint(model, weights)
    elif weights_layout == "flux":
        load_flux_checkpoint(model, weights)
    else:
        raise ValueError(f"weights_layout must be 'opensora' or 'flux', got {weights_layout!r}")
    return model.to(device)
