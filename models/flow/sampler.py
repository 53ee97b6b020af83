"""The inference sampler: Euler integration of the flow from t = 1 (noise) to t = 0 with decoupled
text/image guidance, guidance oscillation and the image-guidance ramp (docs/models.md#sampling-and-guidance,
#mmdit-blocks).

Per step i (0-based) with t_i -> t_{i+1}:

1. one model call on a batch of 3B: x repeated three times, text ``[prompt, null, null]`` and visual cond
   ``[cond, cond, zeros]`` -> v_c, v_u, v_u2 (``three_pass_velocity``); for t2v the cond is all zeros, so
   the third pass repeats the second and one call on 2B gives all three (``two_pass_velocity``);
2. g_txt(i), g_img(i) = the scale, or 1.0 on odd steps i >= 10 when oscillation is on (``oscillated_scale``);
3. for ``i2v*`` conditions with ``scale_temporal_osci`` and g_img(i) > 1, g_img becomes a per-latent-frame ramp
   ``linspace(1, linspace(g_img, 1, steps+1)[i], T_lat)`` packed like the latent (``image_guidance_ramp``);
4. v̂ = v_u2 + g_img·(v_u − v_u2) + g_txt·(v_c − v_u) (``combine_guidance``);
5. x <- x + (t_{i+1} − t_i)·v̂.

Afterwards the latent is unpacked, and the reference latent frames are written back (frame 0 for
``i2v_head``, the last for ``i2v_tail``, both for ``i2v_loop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from soraflow.models.flow.conditions import (
    build_cond,
    condition_mask,
    is_i2v,
    place_references,
)
from soraflow.models.flow.flow_matching import inference_shift_alpha, inference_timesteps
from soraflow.models.packing import image_position_ids, pack, text_position_ids, unpack

OSCILLATION_FORCE_STEPS = 10


# ---------------------------------------------------------------------------------------------------------
# Guidance schedules
# ---------------------------------------------------------------------------------------------------------


def oscillated_scale(scale: float, step: int, force_num: int = OSCILLATION_FORCE_STEPS) -> float:
    """Guidance oscillation (`get_oscillation_gs`): the full scale for step < force_num or an even step,
    otherwise 1.0 (no guidance). ``step`` is 0-based."""
    if step < force_num or step % 2 == 0:
        return scale
    return 1.0


def oscillation_schedule(scale: float, steps: int, force_num: int = OSCILLATION_FORCE_STEPS) -> list[float]:
    """``oscillated_scale`` for every step 0 .. steps-1."""
    return [oscillated_scale(scale, i, force_num) for i in range(steps)]


def image_guidance_ramp(image_scale: float, step: int, steps: int, latent_frames: int) -> torch.Tensor:
    """Per-latent-frame image guidance at ``step`` (fp32, shape [T_lat]):
    g_step = linspace(g_img, 1, steps + 1)[step]; ramp = linspace(1, g_step, T_lat) — frame 0 gets 1, the last
    frame g_step. Applied by the sampler only for i2v* conditions and only when the (oscillated) g_img > 1."""
    g_step = torch.linspace(image_scale, 1.0, steps + 1, dtype=torch.float32)[step]
    return torch.linspace(1.0, float(g_step), latent_frames, dtype=torch.float32)


def pack_frame_scale(frame_scale: torch.Tensor, latent_shape: Sequence[int], patch_size: int) -> torch.Tensor:
    """Broadcast a per-latent-frame scale [T] over (B, C, H, W) and pack it like the latent:
    -> [B, T·(H/p)·(W/p), C·p·p]."""
    b, c, t, h, w = latent_shape
    if frame_scale.shape != (t,):
        raise ValueError(f"frame scale must be [T={t}], got {tuple(frame_scale.shape)}")
    full = frame_scale.reshape(1, 1, t, 1, 1).expand(b, c, t, h, w)
    return pack(full, patch_size)


def combine_guidance(
    v_c: torch.Tensor,
    v_u: torch.Tensor,
    v_u2: torch.Tensor,
    text_scale: float | torch.Tensor,
    image_scale: float | torch.Tensor,
) -> torch.Tensor:
    """Decoupled guidance (docs/models.md#sampling-and-guidance): v̂ = v_u2 + g_img·(v_u − v_u2) + g_txt·(v_c − v_u).

    v_c = v(x, text, image cond), v_u = v(x, null text, image cond), v_u2 = v(x, null text, zero cond).
    ``image_scale`` may be a tensor broadcastable against the velocities (the packed ramp)."""
    return v_u2 + image_scale * (v_u - v_u2) + text_scale * (v_c - v_u)


# ---------------------------------------------------------------------------------------------------------
# The three predictions in one call
# ---------------------------------------------------------------------------------------------------------


@dataclass
class GuidanceBatch:
    """The 3B-batched inputs that stay fixed over the sampling loop."""

    img_ids: torch.Tensor  # [3B, L_img, 3]
    txt: torch.Tensor  # [3B, L_txt, D_txt]: prompt, null, null
    txt_ids: torch.Tensor  # [3B, L_txt, 3] zeros
    y_vec: torch.Tensor  # [3B, D_vec]: prompt, null, null
    cond: torch.Tensor  # [3B, L_img, (C+1)·p·p]: cond, cond, zeros
    guidance: torch.Tensor | None  # [3B] or None


def _expand_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}, expected {batch} (or 1)")


def build_guidance_batch(
    text: Mapping[str, torch.Tensor],
    null_text: Mapping[str, torch.Tensor],
    packed_cond: torch.Tensor,
    *,
    latent_shape: Sequence[int],
    patch_size: int,
    guidance_value: float | None,
    device,
    dtype: torch.dtype,
) -> GuidanceBatch:
    """Stack ``[prompt, null, null]`` text, ``[cond, cond, zeros]`` visual cond and the position ids to 3B."""
    b, _, t, h, w = latent_shape
    txt = _expand_batch(text["txt"], b, "text['txt']")
    y = _expand_batch(text["y_vec"], b, "text['y_vec']")
    n_txt = _expand_batch(null_text["txt"], b, "null_text['txt']")
    n_y = _expand_batch(null_text["y_vec"], b, "null_text['y_vec']")
    if n_txt.shape[1:] != txt.shape[1:]:
        raise ValueError(f"null text {tuple(n_txt.shape)} and text {tuple(txt.shape)} must have the same length/width")
    if n_y.shape[1:] != y.shape[1:]:
        raise ValueError(f"null y_vec {tuple(n_y.shape)} and y_vec {tuple(y.shape)} differ")
    txt3 = torch.cat([txt, n_txt, n_txt], dim=0).to(device=device, dtype=dtype)
    y3 = torch.cat([y, n_y, n_y], dim=0).to(device=device, dtype=dtype)
    cond3 = torch.cat([packed_cond, packed_cond, torch.zeros_like(packed_cond)], dim=0).to(device=device, dtype=dtype)
    return GuidanceBatch(
        img_ids=image_position_ids(3 * b, t, h, w, patch_size, device=device, dtype=dtype),
        txt=txt3,
        txt_ids=text_position_ids(3 * b, txt3.shape[1], device=device, dtype=dtype),
        y_vec=y3,
        cond=cond3,
        guidance=None
        if guidance_value is None
        else torch.full((3 * b,), guidance_value, device=device, dtype=dtype),
    )


def _velocity(model, img: torch.Tensor, t_curr: float, batch: GuidanceBatch, passes: int) -> torch.Tensor:
    b = img.shape[0]
    n = passes * b  # the guidance batch is ordered [prompt, null, null] x B, so its first rows are the passes
    img_n = torch.cat([img] * passes, dim=0)
    t_vec = torch.full((n,), t_curr, device=img.device, dtype=img.dtype)
    return model(
        img=img_n,
        img_ids=batch.img_ids[:n],
        txt=batch.txt[:n],
        txt_ids=batch.txt_ids[:n],
        timesteps=t_vec,
        y_vec=batch.y_vec[:n],
        cond=batch.cond[:n],
        guidance=None if batch.guidance is None else batch.guidance[:n],
    )


def three_pass_velocity(
    model, img: torch.Tensor, t_curr: float, batch: GuidanceBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v_c, v_u, v_u2) for packed ``img`` [B, L, C·p·p] at time ``t_curr`` from ONE model call on 3B."""
    v_c, v_u, v_u2 = _velocity(model, img, t_curr, batch, 3).chunk(3, dim=0)
    return v_c, v_u, v_u2


def two_pass_velocity(
    model, img: torch.Tensor, t_curr: float, batch: GuidanceBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text-to-video: the visual condition is all zeros, so the third pass (null text, zero cond) has exactly the
    second pass's inputs (null text, cond = zeros) and v_u2 = v_u; one model call on 2B instead of 3B does a third
    less DiT work, and the image-guidance term g_img·(v_u − v_u2) vanishes as it did before."""
    v_c, v_u = _velocity(model, img, t_curr, batch, 2).chunk(2, dim=0)
    return v_c, v_u, v_u


# ---------------------------------------------------------------------------------------------------------
# Shapes, noise
# ---------------------------------------------------------------------------------------------------------


def inference_latent_shape(
    batch: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    latent_channels: int,
    time_compression: int,
    spatial_compression: int,
    is_causal: bool,
    patch_size: int,
) -> tuple[int, int, int, int, int]:
    """Noise shape [B, C_lat, T_lat, p·⌈H/D⌉, p·⌈W/D⌉] with D = spatial compression × patch
(docs/models.md#sampling-and-guidance):
    HunyuanVideo VAE (8, p=2): [B, 16, T, 2⌈H/16⌉, 2⌈W/16⌉]; DC-AE (32, p=1): [B, 128, T, ⌈H/32⌉, ⌈W/32⌉].
    T_lat = (F−1)/tc + 1 (causal, F = tc·k+1) or F/tc (non-causal, F multiple of tc); images F = 1 -> 1."""
    if num_frames == 1:
        t_lat = 1
    elif is_causal:
        if (num_frames - 1) % time_compression:
            raise ValueError(f"a causal AE needs {time_compression}k+1 frames, got {num_frames}")
        t_lat = (num_frames - 1) // time_compression + 1
    else:
        if num_frames % time_compression:
            raise ValueError(f"a non-causal AE needs a multiple of {time_compression} frames, got {num_frames}")
        t_lat = num_frames // time_compression
    d = spatial_compression * patch_size
    return (batch, latent_channels, t_lat, patch_size * math.ceil(height / d), patch_size * math.ceil(width / d))


def drop_i2v_pad_frames(video: torch.Tensor, cond_type: str, *, is_causal: bool, time_compression: int,
                        dim: int = 2) -> torch.Tensor:
    """Decoded frames -> the frames the released sampler keeps: for a non-causal AE it drops the
    ``time_compression - 1`` frames decoded together with an i2v reference frame (first ones for ``i2v_head``,
    last ones for ``i2v_tail``, both for ``i2v_loop``); causal AEs and other conditions keep every frame.
    ``dim`` is the time axis (2 for [B, C, T, H, W], 1 for [C, T, H, W])."""
    pad = time_compression - 1
    if is_causal or pad <= 0 or cond_type not in ("i2v_head", "i2v_tail", "i2v_loop"):
        return video
    n = video.shape[dim]
    start = pad if cond_type in ("i2v_head", "i2v_loop") else 0
    stop = n - pad if cond_type in ("i2v_tail", "i2v_loop") else n
    if stop <= start:
        raise ValueError(f"{cond_type}: {n} decoded frames leave nothing after dropping {pad} pad frame(s)")
    return video.narrow(dim, start, stop - start)


def initial_noise(
    latent_shape: Sequence[int], seed: int, device=None, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """z ~ N(0, I) drawn directly in ``dtype`` (bf16) with ``torch.Generator(device).manual_seed(seed)``
    (docs/models.md#sampling-and-guidance)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(tuple(latent_shape), generator=gen, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class StepInfo:
    step: int  # 0-based
    num_steps: int
    t_curr: float
    t_next: float
    text_scale: float  # after oscillation
    image_scale: float  # after oscillation, before the per-frame ramp
    image_ramp: torch.Tensor | None  # [T_lat] when the ramp was applied
    latent: torch.Tensor  # packed x after this step [B, L, C·p·p]


def sample(
    model,
    *,
    text: Mapping[str, torch.Tensor],
    null_text: Mapping[str, torch.Tensor],
    latent_shape: Sequence[int],
    cond_type: str = "t2v",
    ref_latent: torch.Tensor | Sequence[torch.Tensor] | None = None,
    steps: int = 50,
    guidance_text: float = 7.5,
    guidance_image: float = 3.0,
    text_osci: bool = True,
    image_osci: bool = True,
    scale_temporal_osci: bool = True,
    seed: int = 0,
    device=None,
    dtype: torch.dtype = torch.bfloat16,
    progress: bool | Callable[[StepInfo], None] | None = None,
    is_causal: bool = True,
    time_compression: int = 4,
    shift: bool = True,
    shift_alpha: float | None = None,
    noise: torch.Tensor | None = None,
    predict: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    force_num: int = OSCILLATION_FORCE_STEPS,
) -> torch.Tensor:
    """Generate a latent [B, C, T, H, W] (returned in float32, reference frames exact).

    text / null_text: dicts with ``txt`` [B|1, L, D_txt] (T5) and ``y_vec`` [B|1, D_vec] (CLIP pooled); the null
    condition is the encoding of the empty (negative) prompt. ``ref_latent``: the encoded reference(s) for
    i2v/v2v — one tensor or a list [B, C, t_ref, H, W] (see ``conditions.place_references``; a full-size
    placed latent also works). ``is_causal``/``time_compression`` only matter for the v2v reference length.
    ``seed`` draws the bf16 noise on ``device`` unless ``noise`` is given. α comes from the latent shape and
    the model's patch size (``inference_shift_alpha``) unless ``shift_alpha`` is given; ``shift=False``
    keeps the plain linspace. ``progress``: True for a tqdm bar, or a callable receiving a ``StepInfo``
    after every step. ``predict`` returns (v_c, v_u, v_u2); by default ``two_pass_velocity`` for t2v (where
    the third pass repeats the second) and ``three_pass_velocity`` otherwise.
    """
    b, c, t, h, w = (int(s) for s in latent_shape)
    latent_shape = (b, c, t, h, w)
    p = int(model.config.patch_size)
    if c * p * p != int(model.config.in_channels):
        raise ValueError(
            f"latent channels {c} x patch {p}^2 = {c * p * p} != model in_channels {model.config.in_channels}"
        )
    if device is None:
        device = text["txt"].device
    device = torch.device(device)

    placed, cond = _visual_condition(cond_type, ref_latent, latent_shape, is_causal=is_causal,
                                     time_compression=time_compression, device=device, dtype=dtype)
    gbatch = build_guidance_batch(
        text, null_text, pack(cond, p), latent_shape=latent_shape, patch_size=p,
        guidance_value=guidance_text, device=device, dtype=dtype,
    )

    if noise is None:
        noise = initial_noise(latent_shape, seed, device=device, dtype=dtype)
    elif tuple(noise.shape) != latent_shape:
        raise ValueError(f"noise {tuple(noise.shape)} != latent_shape {latent_shape}")
    alpha = None
    if shift:
        alpha = shift_alpha if shift_alpha is not None else inference_shift_alpha(latent_shape, p)
    timesteps = inference_timesteps(steps, alpha)

    use_ramp = scale_temporal_osci and is_i2v(cond_type)
    if predict is None:
        predict = two_pass_velocity if cond_type == "t2v" else three_pass_velocity
    img = pack(noise.to(device=device, dtype=dtype), p)

    bar = None
    callback = progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sampling")

    for i, (t_curr, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        v_c, v_u, v_u2 = predict(model, img, t_curr, gbatch)
        g_txt = oscillated_scale(guidance_text, i, force_num) if text_osci else guidance_text
        g_img = oscillated_scale(guidance_image, i, force_num) if image_osci else guidance_image
        ramp = None
        image_scale: float | torch.Tensor = g_img
        if use_ramp and g_img > 1.0:
            ramp = image_guidance_ramp(g_img, i, steps, t)
            image_scale = pack_frame_scale(ramp, latent_shape, p).to(device=device, dtype=v_c.dtype)
        v_hat = combine_guidance(v_c, v_u, v_u2, g_txt, image_scale)
        img = img + (t_next - t_curr) * v_hat
        if callback is not None:
            callback(StepInfo(i, steps, t_curr, t_next, g_txt, g_img, ramp, img))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    return _keep_reference_frames(unpack(img, p, t, h, w).float(), placed, cond_type)


def _visual_condition(cond_type, ref_latent, latent_shape, *, is_causal, time_compression, device, dtype):
    """(the references placed in a full-size latent or None for t2v, the DiT's `cond` input [B, C+1, T, H, W])."""
    b, c, t, h, w = latent_shape
    if cond_type == "t2v":
        return None, torch.zeros(b, c + 1, t, h, w, device=device, dtype=dtype)
    if ref_latent is None:
        raise ValueError(f"cond_type {cond_type!r} needs ref_latent")
    mask = condition_mask(cond_type, latent_shape, is_causal=is_causal, time_compression=time_compression,
                          device=device, dtype=torch.float32)
    placed = place_references(cond_type, ref_latent, latent_shape, is_causal=is_causal,
                              time_compression=time_compression, device=device)
    return placed, build_cond(mask.to(placed.dtype), placed).to(dtype)


def _keep_reference_frames(latent: torch.Tensor, placed: torch.Tensor | None, cond_type: str) -> torch.Tensor:
    """The reference frames are returned exactly as given, not as the sampler reconstructed them."""
    if placed is not None:
        placed = placed.float()
        if cond_type in ("i2v_head", "i2v_loop"):
            latent[:, :, :1] = placed[:, :, :1]
        if cond_type in ("i2v_tail", "i2v_loop"):
            latent[:, :, -1:] = placed[:, :, -1:]
    return latent
