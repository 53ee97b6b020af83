"""Visual (image / video) conditions for training and inference (docs/models.md#mmdit-conditioning-inputs,
#condition-dropout, #visual-conditions-in-training, #sampling-and-guidance, #mmdit-forward-pass).

A condition is a per-latent-frame binary ``mask`` [B, 1, T_lat, H, W] and a reference latent of the full
latent shape [B, C, T_lat, H, W] that is zero outside the masked frames. The DiT sees
``cond = cat(mask, mask·ref)`` along channels ([B, C+1, T_lat, H, W]), packed like the latent; ``t2v`` is an
all-zero cond.

Condition types and the latent frames they fix (T = T_lat):

============== ======================= ================================ =========================================
type           masked latent frames    causal AE reference (pixels)     non-causal AE reference (pixels)
============== ======================= ================================ =========================================
t2v            none                    -                                -
i2v_head       0                       first frame alone (-> 1 latent)  first frame alone (-> 1 latent)
i2v_tail       T-1                     last frame alone                 last frame alone
i2v_loop       0 and T-1               first and last frame, separately first and last frame, separately
v2v_head       0 .. k-1                first 33 frames -> k = 9         first 32 frames -> k = 8
v2v_tail       T-k .. T-1              last 33 frames -> k = 9          last 32 frames -> k = 8
v2v_head_easy  0 .. k-1                first 65 frames -> k = 17        first 64 frames -> k = 16
v2v_tail_easy  T-k .. T-1              last 65 frames -> k = 17         last 64 frames -> k = 16
============== ======================= ================================ =========================================

(For a time compression other than 4 the v2v references are 32/64 pixel frames (+1 for causal AEs), giving
32/tc (+1) and 64/tc (+1) latent frames.) In training, every i2v reference and every causal v2v reference is
encoded **separately** from the training clip (one posterior sample each) so the condition does not leak
information from the frames being generated; a non-causal v2v reference is the slice of the whole clip's latent,
as in the released training code (the released high-compression model was trained on those references). A
one-frame reference needs an autoencoder that accepts a single frame (an image), for both AE kinds, as in the
released code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

CONDITION_TYPES = (
    "t2v",
    "i2v_head",
    "i2v_tail",
    "i2v_loop",
    "v2v_head",
    "v2v_tail",
    "v2v_head_easy",
    "v2v_tail_easy",
)
I2V_TYPES = ("i2v_head", "i2v_tail", "i2v_loop")
V2V_TYPES = ("v2v_head", "v2v_tail", "v2v_head_easy", "v2v_tail_easy")

# The stage-2/3 training mix (docs/models.md#condition-dropout): 1/8 of the samples are t2v.
DEFAULT_TRAIN_CONDITION_WEIGHTS = {"t2v": 1, "i2v_head": 5, "i2v_loop": 1, "i2v_tail": 1}

V2V_REFERENCE_PIXELS = 32  # plus one frame for causal AEs
V2V_EASY_REFERENCE_PIXELS = 64


def _check_type(cond_type: str) -> None:
    if cond_type not in CONDITION_TYPES:
        raise ValueError(f"unknown condition type {cond_type!r}; expected one of {CONDITION_TYPES}")


def is_i2v(cond_type: str) -> bool:
    return cond_type in I2V_TYPES


def is_v2v(cond_type: str) -> bool:
    return cond_type in V2V_TYPES


def reference_frames(cond_type: str, *, is_causal: bool, time_compression: int = 4) -> tuple[int, int]:
    """(pixel frames, latent frames) of ONE reference of this condition type; (0, 0) for t2v.

    i2v references are single images (1 -> 1). v2v references are 32 (64 for ``_easy``) pixel frames, plus one
    for a causal AE: causal 33 -> 9, 65 -> 17; non-causal 32 -> 8, 64 -> 16 (with time compression 4).
    """
    _check_type(cond_type)
    if cond_type == "t2v":
        return 0, 0
    if is_i2v(cond_type):
        return 1, 1
    pixels = V2V_EASY_REFERENCE_PIXELS if cond_type.endswith("_easy") else V2V_REFERENCE_PIXELS
    if pixels % time_compression:
        raise ValueError(f"v2v reference of {pixels} frames is not a multiple of time compression {time_compression}")
    latents = pixels // time_compression
    if is_causal:
        return pixels + 1, latents + 1
    return pixels, latents


def conditioned_frames(
    cond_type: str, latent_frames: int, *, is_causal: bool, time_compression: int = 4
) -> list[int]:
    """Indices of the latent frames a condition type fixes (masks) in a latent of ``latent_frames`` frames."""
    _check_type(cond_type)
    t = latent_frames
    if cond_type == "t2v":
        return []
    if t < 2:
        raise ValueError(f"condition {cond_type!r} needs a video latent (>= 2 latent frames), got {t}")
    if cond_type == "i2v_head":
        return [0]
    if cond_type == "i2v_tail":
        return [t - 1]
    if cond_type == "i2v_loop":
        return [0, t - 1]
    _, k = reference_frames(cond_type, is_causal=is_causal, time_compression=time_compression)
    if t <= k:
        raise ValueError(
            f"condition {cond_type!r} fixes {k} latent frames; a latent of {t} frames is too short (needs > {k})"
        )
    return list(range(k)) if "_head" in cond_type else list(range(t - k, t))


# ---------------------------------------------------------------------------------------------------------
# Drawing a condition type per sample (training)
# ---------------------------------------------------------------------------------------------------------


def allowed_condition_weights(
    weights: Mapping[str, float], latent_frames: int, *, is_causal: bool, time_compression: int = 4
) -> dict[str, float]:
    """The weights restricted to the types this clip can hold. Fallback rule:

    * images (``latent_frames == 1``): only ``t2v`` (no visual condition for images, as released);
    * a v2v type is kept only if the clip has MORE latent frames than the reference fixes
      (causal: T > 9 for v2v, T > 17 for ``_easy``; non-causal: T > 8 / T > 16) — the released
      ``pop`` rules; the dropped weight is not redistributed to a particular type, the remaining weights are
      simply renormalised by the draw;
    * zero weights are dropped; if nothing with a positive weight remains, ``{"t2v": 1.0}``.

    Unlike the released code this never mutates ``weights`` (the original ``pop`` removed v2v types for
    every later batch after the first short clip).
    """
    for name, w in weights.items():
        _check_type(name)
        if w < 0:
            raise ValueError(f"condition weight for {name!r} must be >= 0, got {w}")
    if latent_frames <= 1:
        return {"t2v": 1.0}
    out: dict[str, float] = {}
    for name, w in weights.items():
        if w <= 0:
            continue
        if is_v2v(name):
            _, k = reference_frames(name, is_causal=is_causal, time_compression=time_compression)
            if latent_frames <= k:
                continue
        out[name] = float(w)
    return out or {"t2v": 1.0}


def draw_condition_types(
    weights: Mapping[str, float],
    batch: int,
    latent_frames: int,
    *,
    is_causal: bool,
    time_compression: int = 4,
    generator: torch.Generator | None = None,
) -> list[str]:
    """One condition type per sample, drawn independently with probability ∝ weight (after
    ``allowed_condition_weights``), using ``generator`` (on any device) for reproducibility."""
    allowed = allowed_condition_weights(
        weights, latent_frames, is_causal=is_causal, time_compression=time_compression
    )
    names = list(allowed)
    # On the generator's device: the trainer's generator lives on the GPU, and multinomial needs them together.
    device = generator.device if generator is not None else None
    probs = torch.tensor([allowed[n] for n in names], dtype=torch.float64, device=device)
    idx = torch.multinomial(probs, batch, replacement=True, generator=generator)
    return [names[i] for i in idx.tolist()]


# ---------------------------------------------------------------------------------------------------------
# Masks, references, cond
# ---------------------------------------------------------------------------------------------------------


def _types_for_batch(cond_types: str | Sequence[str], batch: int) -> list[str]:
    if isinstance(cond_types, str):
        return [cond_types] * batch
    cond_types = list(cond_types)
    if len(cond_types) != batch:
        raise ValueError(f"got {len(cond_types)} condition types for a batch of {batch}")
    return cond_types


def condition_mask(
    cond_types: str | Sequence[str],
    latent_shape: Sequence[int],
    *,
    is_causal: bool,
    time_compression: int = 4,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Binary mask [B, 1, T, H, W]: 1 on the latent frames fixed by each sample's condition type."""
    b, _, t, h, w = latent_shape
    mask = torch.zeros(b, 1, t, h, w, device=device, dtype=dtype)
    for i, ct in enumerate(_types_for_batch(cond_types, b)):
        frames = conditioned_frames(ct, t, is_causal=is_causal, time_compression=time_compression)
        if frames:
            mask[i, :, frames] = 1
    return mask


def build_cond(mask: torch.Tensor, ref_latent: torch.Tensor) -> torch.Tensor:
    """cond = cat(mask, mask·ref_latent) along channels: [B, 1 + C, T, H, W] (mask is channel 0,
    docs/models.md#mmdit-forward-pass)."""
    if mask.ndim != 5 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, T, H, W], got {tuple(mask.shape)}")
    if ref_latent.shape[0] != mask.shape[0] or ref_latent.shape[2:] != mask.shape[2:]:
        raise ValueError(f"ref_latent {tuple(ref_latent.shape)} does not match mask {tuple(mask.shape)}")
    mask = mask.to(ref_latent.dtype)
    return torch.cat([mask, mask * ref_latent], dim=1)


def _as_ref_list(refs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(refs, torch.Tensor):
        return [refs]
    refs = list(refs)
    if not refs:
        raise ValueError("no reference latent given")
    return refs


def place_references(
    cond_type: str,
    refs: torch.Tensor | Sequence[torch.Tensor],
    latent_shape: Sequence[int],
    *,
    is_causal: bool,
    time_compression: int = 4,
    device=None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Put encoded reference latents into a full-size latent [B, C, T, H, W] (zeros elsewhere).

    ``refs`` is one tensor or a list of tensors [B, C, t_ref, H, W] — the separately encoded references, in
    order (head then tail for ``i2v_loop``). As in the released ``prepare_inference_condition``:
    ``i2v_head`` takes frame 0 of the first reference, ``i2v_tail`` the last frame of the last one,
    ``i2v_loop`` both, ``v2v_head`` the first k frames of the first reference, ``v2v_tail`` its last k frames.
    So passing an already full-size latent also works. t2v returns zeros (refs may be None).
    """
    _check_type(cond_type)
    b, c, t, h, w = latent_shape
    if cond_type == "t2v":
        return torch.zeros(b, c, t, h, w, device=device, dtype=dtype or torch.float32)
    rs = _as_ref_list(refs)
    for r in rs:
        if r.ndim != 5 or r.shape[0] != b or r.shape[1] != c or tuple(r.shape[3:]) != (h, w):
            raise ValueError(f"reference latent {tuple(r.shape)} does not fit latent shape {tuple(latent_shape)}")
    dtype = dtype or rs[0].dtype
    device = device if device is not None else rs[0].device
    out = torch.zeros(b, c, t, h, w, device=device, dtype=dtype)
    frames = conditioned_frames(cond_type, t, is_causal=is_causal, time_compression=time_compression)
    if cond_type == "i2v_head":
        out[:, :, 0] = rs[0][:, :, 0]
    elif cond_type == "i2v_tail":
        out[:, :, -1] = rs[-1][:, :, -1]
    elif cond_type == "i2v_loop":
        out[:, :, 0] = rs[0][:, :, 0]
        out[:, :, -1] = rs[-1][:, :, -1]
    else:
        k = len(frames)
        if rs[0].shape[2] < k:
            raise ValueError(f"{cond_type} needs a reference of >= {k} latent frames, got {rs[0].shape[2]}")
        if "_head" in cond_type:
            out[:, :, :k] = rs[0][:, :, :k]
        else:
            out[:, :, -k:] = rs[0][:, :, -k:]
    return out


def reference_pixel_clips(cond_type: str, video: torch.Tensor, *, is_causal: bool, time_compression: int = 4):
    """The pixel references of ``video`` [B, 3, F, H, W] for a condition type, each to be encoded on its own:
    i2v_head [first frame], i2v_tail [last frame], i2v_loop [first, last], v2v_* [first/last 33|65 (causal) or
    32|64 (non-causal) frames]. t2v -> []."""
    _check_type(cond_type)
    if cond_type == "t2v":
        return []
    if cond_type == "i2v_head":
        return [video[:, :, :1]]
    if cond_type == "i2v_tail":
        return [video[:, :, -1:]]
    if cond_type == "i2v_loop":
        return [video[:, :, :1], video[:, :, -1:]]
    n, _ = reference_frames(cond_type, is_causal=is_causal, time_compression=time_compression)
    if video.shape[2] < n:
        raise ValueError(f"{cond_type} needs at least {n} reference frames, got {video.shape[2]}")
    return [video[:, :, :n]] if "_head" in cond_type else [video[:, :, -n:]]


def encode_references(ae, video: torch.Tensor, cond_type: str, generator: torch.Generator | None = None):
    """Encode each pixel reference of ``video`` separately with the autoencoder (one posterior sample each).
    Returns a list of scaled latents [B, C, t_ref, H, W] suitable for ``place_references``."""
    clips = reference_pixel_clips(
        cond_type, video, is_causal=ae.is_causal, time_compression=ae.time_compression
    )
    return [ae.encode(clip, generator=generator) for clip in clips]


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainCondition:
    x0: torch.Tensor  # [B, C, T, H, W] scaled latent of the whole clip (the denoising target's data)
    mask: torch.Tensor  # [B, 1, T, H, W]
    ref_latent: torch.Tensor  # [B, C, T, H, W], already multiplied by mask
    cond: torch.Tensor  # [B, C + 1, T, H, W] = cat(mask, ref_latent)
    cond_types: list[str]


def prepare_train_condition(
    ae,
    video: torch.Tensor,
    weights: Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
    cond_types: Sequence[str] | None = None,
) -> TrainCondition:
    """Encode a training batch and build its visual condition (docs/models.md#visual-conditions-in-training).

    ``video`` [B, 3, F, H, W] in [-1, 1]. A condition type is drawn per sample from ``weights`` (default
    ``DEFAULT_TRAIN_CONDITION_WEIGHTS``) with ``generator`` unless ``cond_types`` is given. x0 = encode(clip)
    for the whole batch; then, per condition type, its references are encoded separately (first frame alone,
    last frame alone, first/last 33 frames for a causal AE) or, for v2v with a non-causal AE, sliced from x0
    (first/last 8|16 latent frames), and written into the masked frames of ``ref_latent``.
    The optional frame-padding trick of the released non-causal variant (off by default) is not implemented.
    """
    b, f = video.shape[0], video.shape[2]
    t_lat = ae.latent_frames(f)
    tc = ae.time_compression
    if cond_types is None:
        cond_types = draw_condition_types(
            weights if weights is not None else DEFAULT_TRAIN_CONDITION_WEIGHTS,
            b,
            t_lat,
            is_causal=ae.is_causal,
            time_compression=tc,
            generator=generator,
        )
    cond_types = _types_for_batch(cond_types, b)

    x0 = ae.encode(video, generator=generator)
    if x0.shape[2] != t_lat:
        raise ValueError(f"autoencoder returned {x0.shape[2]} latent frames, latent_frames({f}) says {t_lat}")
    mask = condition_mask(cond_types, x0.shape, is_causal=ae.is_causal, time_compression=tc,
                          device=x0.device, dtype=x0.dtype)
    ref = torch.zeros_like(x0)
    for ct in dict.fromkeys(cond_types):  # distinct types, in first-seen order (deterministic)
        if ct == "t2v":
            continue
        idx = [i for i, c in enumerate(cond_types) if c == ct]
        if is_v2v(ct) and not ae.is_causal:
            # The released non-causal rule: the reference is the first/last k latent frames of the clip's own
            # latent, not a separate encode (the released high-compression model was trained this way).
            refs = [x0[idx]]
        else:
            refs = encode_references(ae, video[idx], ct, generator=generator)
        sub_shape = (len(idx),) + tuple(x0.shape[1:])
        ref[idx] = place_references(ct, refs, sub_shape, is_causal=ae.is_causal, time_compression=tc,
                                    device=x0.device, dtype=x0.dtype)
    ref = mask * ref
    cond = torch.cat([mask, ref], dim=1)
    return TrainCondition(x0=x0, mask=mask, ref_latent=ref, cond=cond, cond_types=list(cond_types))


# ---------------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------------


def prepare_inference_condition(
    cond_type: str,
    latent_shape: Sequence[int],
    refs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    is_causal: bool,
    time_compression: int = 4,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, 1, T, H, W], masked reference latent [B, C, T, H, W]) for one condition type at inference.
    ``refs``: the separately encoded reference latent(s) (see ``place_references``); None only for t2v."""
    _check_type(cond_type)
    if cond_type != "t2v" and refs is None:
        raise ValueError(f"condition {cond_type!r} needs a reference latent")
    ref = place_references(cond_type, refs, latent_shape, is_causal=is_causal,
                           time_compression=time_compression, device=device, dtype=dtype)
    mask = condition_mask(cond_type, latent_shape, is_causal=is_causal, time_compression=time_compression,
                          device=ref.device, dtype=dtype)
    return mask, mask * ref
