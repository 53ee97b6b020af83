"""Generation: prompts (+ an optional reference image) -> video files, for any model preset and weights folder.

Weights are read from local paths only. A weights folder laid out like Open-Sora's `ckpts/` works as is:

    Open_Sora_v2.safetensors            the 11B MMDiT (HunyuanVideo VAE latents)
    Open_Sora_v2_Video_DC_AE.safetensors the high-compression MMDiT (Video DC-AE latents)
    hunyuan_vae.safetensors             HunyuanVideo VAE
    F32T4C128_AE.safetensors            Video DC-AE
    google/t5-v1_1-xxl/                 T5 encoder + tokenizer
    openai/clip-vit-large-patch14/      CLIP text model + tokenizer

Each path can also be given on its own. `random_init` builds the preset with random weights (timing and the
tiny local pipeline), with tiny text encoders written once to a cache folder.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soraflow.common.dtypes import torch_dtype
from soraflow.common.video_io import to_uint8_frames, write_video
from soraflow.models.aspect import inference_size, training_aspect_ratios
from soraflow.models.flow.sampler import drop_i2v_pad_frames, inference_latent_shape, sample
from soraflow.models.mmdit import get_config
from soraflow.inference.cuda_graph import CUDAGraphRunner
from soraflow.models.mmdit.checkpoint import build_mmdit
from soraflow.models.text import TextConditioner, inference_caption
from soraflow.models.text.tiny import soraflow_cache_dir as _cache_dir, tiny_text_encoder_dirs


DCAE_TRAIN_SCALING_FACTOR = 0.493  # = DCAEConfig's default, what the high-compression DiT trains with
PRESET = "preset"  # GenerateOptions.dcae_scaling_factor: take the preset's value


@dataclass(frozen=True)
class PipelinePreset:
    dit_config: str
    autoencoder: str  # "hunyuan" | "dcae"
    tiny: bool
    dit_file: str
    ae_file: str
    t5_dir: str = "google/t5-v1_1-xxl"
    clip_dir: str = "openai/clip-vit-large-patch14"
    # Video DC-AE latent scaling used at generation: the released inference config builds the DC-AE without one
    # (although its DiT was trained on latents / 0.493); the project's own tiny-hc models are trained and
    # sampled with the training value. Hunyuan presets ignore it.
    dcae_scaling_factor: float | None = None
    # the generated tiny T5/CLIP (None: whenever the preset is tiny). The one-GPU demo's presets pair full-size
    # autoencoders with the tiny text encoders, since nothing is downloaded there.
    tiny_text: bool | None = None

    @property
    def text_is_tiny(self) -> bool:
        return self.tiny if self.tiny_text is None else self.tiny_text


PIPELINES = {
    "opensora2": PipelinePreset("opensora2-11b", "hunyuan", False, "Open_Sora_v2.safetensors", "hunyuan_vae.safetensors"),
    "opensora2-hc": PipelinePreset(
        "opensora2-hc", "dcae", False, "Open_Sora_v2_Video_DC_AE.safetensors", "F32T4C128_AE.safetensors"
    ),
    "tiny": PipelinePreset("tiny", "hunyuan", True, "dit.safetensors", "vae.safetensors"),
    "tiny-hc": PipelinePreset("tiny-hc", "dcae", True, "dit.safetensors", "vae.safetensors",
                              dcae_scaling_factor=DCAE_TRAIN_SCALING_FACTOR),
    "gpu-demo": PipelinePreset("gpu-demo", "hunyuan", False, "dit.safetensors", "vae.safetensors", tiny_text=True),
    "gpu-demo-hc": PipelinePreset("gpu-demo-hc", "dcae", False, "dit.safetensors", "vae.safetensors",
                                  dcae_scaling_factor=DCAE_TRAIN_SCALING_FACTOR, tiny_text=True),
}


@dataclass
class GenerateOptions:
    prompts: list[str]
    model: str = "opensora2"
    weights_dir: str | None = None
    dit: str | None = None
    ae: str | None = None
    t5: str | None = None
    clip: str | None = None
    t5_max_length: int = 512  # T5 tokens per prompt: what the DiT was trained with (its recipe's text.t5_max_length)
    random_init: bool = False
    num_frames: int = 129
    resolution: str = "256px"
    aspect_ratio: str = "16:9"
    height: int | None = None
    width: int | None = None
    steps: int = 50
    guidance_text: float = 7.5
    guidance_image: float = 3.0
    seed: int = 42
    fps: int = 24
    motion_score: int | None = 4
    cond_type: str = "t2v"
    ref_image: str | None = None
    negative_prompt: str = ""
    device: str | None = None
    dtype: str | None = None  # bf16 on CUDA, fp32 on CPU by default
    out: str | None = None  # a file (one prompt) ...
    out_dir: str = "samples"  # ... or a folder: "{prompt}-{index}.mp4" (VBench naming)
    fast: bool = True  # fused projections + compiled blocks on CUDA
    # Text encoders and autoencoder(s) live on the CPU and visit the GPU only for their phase, so the GPU holds
    # the DiT alone while it samples; the t2i2v image model likewise.
    offload: bool = False
    fp8: bool = False  # e4m3 weights/activations for the DiT's block linears (training/parallel/fp8.py)
    # Text-to-image-to-video (`docs/inference.md`): a FLUX-layout image model draws the first frame, then i2v_head.
    t2i2v: bool = False
    image_model: str | None = None  # preset ("flux1-dev", "tiny-flux") or a FLUX-layout file
    image_ae: str | None = None  # FLUX autoencoder: diffusers folder or ae.safetensors
    image_resolution: str = "768px"  # the image is drawn here (same aspect ratio), then resized to the video
    image_height: int | None = None
    image_width: int | None = None
    image_guidance: float = 4.0  # FLUX.1-dev's embedded (distilled) guidance
    # Video DC-AE latent scaling: "preset" (the preset's value: None for opensora2-hc as released, 0.493 for
    # tiny-hc), a float, or None (no scaling).
    dcae_scaling_factor: float | str | None = PRESET
    # Non-causal AEs only: the released sampler drops the tc-1 = 3 decoded frames next to an i2v reference
    # frame (head: first 3, tail: last 3, loop: both), so i2v_head of 128 frames gives 125. True keeps them.
    keep_i2v_pad_frames: bool = False
    keep_outputs: bool = False  # GenerateResult.latents / .frames (CPU) for comparisons
    progress: bool = True


@dataclass
class GenerateResult:
    paths: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_gb: float | None = None
    height: int = 0
    width: int = 0
    num_frames: int = 0
    peak_memory_by_phase_gb: dict[str, float] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)  # t2i2v first frames (PNG)
    latents: list[torch.Tensor] = field(default_factory=list)  # keep_outputs: [C, T, H, W] float32
    frames: list[torch.Tensor] = field(default_factory=list)  # keep_outputs: [T, H, W, 3] uint8


@dataclass
class Pipeline:
    preset: PipelinePreset
    dit: torch.nn.Module
    ae: torch.nn.Module
    text: TextConditioner
    image: object | None = None  # t2i.ImagePipeline when t2i2v


def _resolve(explicit: str | None, weights_dir: str | None, name: str, what: str) -> Path:
    if explicit:
        path = Path(explicit)
    elif weights_dir:
        path = Path(weights_dir) / name
    else:
        raise ValueError(f"no {what} weights: pass --weights-dir (expects {name} inside) or the {what} path itself")
    if not path.exists():
        raise FileNotFoundError(f"{what} weights not found: {path} (expected {name})")
    return path


def _dcae_scaling(opts: "GenerateOptions", preset: PipelinePreset, path: Path | None = None) -> float | None:
    """The DC-AE latent scaling: the user's value; else what an export of ours records (the factor measured on
    its training latents); else the preset's (the released inference config's: none)."""
    value = opts.dcae_scaling_factor
    if value == PRESET:
        from soraflow.models.dc_ae.model import recorded_scaling_factor

        recorded = recorded_scaling_factor(path)
        return recorded if recorded is not None else preset.dcae_scaling_factor
    if value is not None and (isinstance(value, str) or not value > 0):
        raise ValueError(f"dcae_scaling_factor must be {PRESET!r}, None or a positive number, got {value!r}")
    return value


def build_autoencoder(kind: str, tiny: bool, path: Path | None, device, dtype, dcae_scaling: float | None = None):
    """The preset's autoencoder: loaded strictly from `path`, or random (tiny or full size)."""
    if kind == "hunyuan":
        from soraflow.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE

        from soraflow.models.hunyuan_vae.config import config_for_weights

        config = config_for_weights(path, tiny)  # an export of ours names its config in its metadata
        ae = HunyuanVideoVAE.from_pretrained(path, config=config) if path else HunyuanVideoVAE(config)
    else:
        from soraflow.models.dc_ae import DCAEConfig, VideoDCAE

        config = DCAEConfig.tiny(scaling_factor=dcae_scaling) if tiny else DCAEConfig(scaling_factor=dcae_scaling)
        ae = VideoDCAE.from_pretrained(path, config=config) if path else VideoDCAE(config)
    return ae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_pipeline(opts: GenerateOptions, device: torch.device, dtype: torch.dtype) -> Pipeline:
    if opts.model not in PIPELINES:
        raise ValueError(f"unknown model preset {opts.model!r}; known: {sorted(PIPELINES)}")
    preset = PIPELINES[opts.model]
    torch.manual_seed(opts.seed)  # random-init weights are reproducible for a seed
    side_device = "cpu" if opts.offload else device  # where the encoders/autoencoders wait between phases
    if opts.random_init:
        if opts.t5 and opts.clip:
            t5_dir, clip_dir = Path(opts.t5), Path(opts.clip)
        elif preset.text_is_tiny:
            t5_dir, clip_dir = tiny_text_encoder_dirs()
        else:
            raise ValueError(
                f"--random-init makes random DiT/AE weights, but preset {opts.model!r} still needs real-size T5 "
                "and CLIP folders: pass --t5 and --clip, or use a tiny preset"
            )
        dit = build_mmdit(get_config(preset.dit_config), None, device=device, dtype=dtype)
        ae = build_autoencoder(preset.autoencoder, preset.tiny, None, side_device, dtype, _dcae_scaling(opts, preset))
    else:
        dit_path = _resolve(opts.dit, opts.weights_dir, preset.dit_file, "DiT")
        ae_path = _resolve(opts.ae, opts.weights_dir, preset.ae_file, "autoencoder")
        if preset.text_is_tiny and not (opts.t5 or opts.clip or opts.weights_dir):
            t5_dir, clip_dir = tiny_text_encoder_dirs()  # what the tiny training recipes condition on
        else:
            t5_dir = _resolve(opts.t5, opts.weights_dir, preset.t5_dir, "T5")
            clip_dir = _resolve(opts.clip, opts.weights_dir, preset.clip_dir, "CLIP")
        dit = build_mmdit(get_config(preset.dit_config), dit_path, device=device, dtype=dtype)
        ae = build_autoencoder(preset.autoencoder, preset.tiny, ae_path, side_device, dtype,
                       _dcae_scaling(opts, preset, ae_path))
    text = TextConditioner.from_pretrained(
        t5_dir, clip_dir, dtype=dtype, device=side_device, cache_dir=_cache_dir() / "text-embeddings",
        t5_max_length=opts.t5_max_length,
    )
    dit = dit.eval().requires_grad_(False)
    image = None
    if opts.t2i2v:
        from .t2i import build_image_pipeline

        image = build_image_pipeline(opts.image_model, opts.image_ae, opts.weights_dir, opts.random_init,
                                     side_device, dtype)
    return Pipeline(preset, dit, ae, text, image)


@contextmanager
def _on_device(modules, device: torch.device, offload: bool):
    """With offload on CUDA: move `modules` to the GPU for the block, back to the CPU after (freeing the memory)."""
    if not offload or device.type != "cuda":
        yield
        return
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")
        torch.cuda.empty_cache()


def _image_size(opts: GenerateOptions, divisor: int) -> tuple[int, int]:
    """t2i2v image size. The released t2i2v path takes it from the *training* table of the image resolution
    with the video model's divisor (768px 16:9 -> 576x1024); a ratio that table lacks falls back to the
    inference size."""
    if opts.image_height and opts.image_width:
        return opts.image_height, opts.image_width
    table = training_aspect_ratios(opts.image_resolution, divisor)
    key = ":".join(part.strip() for part in opts.aspect_ratio.split(":"))
    return table[key] if key in table else inference_size(opts.image_resolution, opts.aspect_ratio, divisor)


def _save_png(image: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    arr = ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)
    return path


def _prepare_dit(pipe: Pipeline, opts: GenerateOptions, device: torch.device):
    """The DiT callable for sampling: FP8 block linears if asked, then (CUDA, fast) compiled blocks replayed from
    a CUDA graph. Converting a DiT that already ran compiled drops its compiled code and captured graphs."""
    dit = pipe.dit
    if opts.fp8 and not getattr(dit, "_soraflow_fp8", None):
        from soraflow.training.parallel.fp8 import quantize_fp8

        if getattr(dit, "_soraflow_fast", False):
            import torch._dynamo

            dit._soraflow_graph = None  # its graphs read the bf16 weights
            torch._dynamo.reset()
        quantize_fp8(dit)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not (opts.fast and device.type == "cuda"):
        return dit
    if not getattr(dit, "_soraflow_fast", False):
        # Fused projections + compiled blocks + CUDA-graph replay (benchmarks/: 0.289 s vs 0.432 s eager, 11B).
        # FP8 layers are per-row scaled, so they need no fusing to give the fused result.
        from soraflow.training.parallel.mmdit import apply_compile

        if not getattr(dit, "_soraflow_fp8", None):
            dit.fuse_projections()
        apply_compile(dit)
        dit._soraflow_fast = True
    if getattr(dit, "_soraflow_graph", None) is None:
        dit._soraflow_graph = CUDAGraphRunner(dit)
    return dit._soraflow_graph


def _load_reference(path: str, height: int, width: int) -> torch.Tensor:
    """Image -> [1, 3, 1, H, W] in [-1, 1], scaled to cover the target then centre-cropped (`docs/inference.md`)."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"reference image {path}: cannot be read ({exc})") from exc
    scale = max(height / img.height, width / img.width)
    img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    arr = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1)[None, :, None]


def _file_name(prompt: str, index: int) -> str:
    safe = re.sub(r"[/\\\0]", " ", prompt).strip()[:180] or "empty"
    return f"{safe}-{index}.mp4"


class _PhaseClock:
    """Wall time and peak GPU memory of each phase (load, text, image, reference_encode, dit, vae_decode, write),
    summed over the prompts: what `GenerateResult.seconds` and `peak_memory_by_phase_gb` report. A phase ends
    with a CUDA synchronize, so its time is the device's, not the launch queue's."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        if self.cuda:
            self.peaks[name] = max(self.peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()


def _check_options(opts: GenerateOptions) -> None:
    if not opts.prompts:
        raise ValueError("no prompts given")
    if opts.t2i2v and opts.ref_image:
        raise ValueError("--t2i2v draws the reference image itself: drop --ref")
    if opts.cond_type != "t2v" and not opts.ref_image and not opts.t2i2v:
        raise ValueError(f"cond_type {opts.cond_type!r} needs a reference image (--ref)")
    if opts.ref_image and not Path(opts.ref_image).is_file():  # before minutes of weight loading
        raise FileNotFoundError(f"reference image {opts.ref_image}: no such file")


def _video_geometry(pipe: Pipeline, opts: GenerateOptions) -> tuple[int, int, tuple]:
    """(height, width, latent shape) of the video `opts` asks for, checked against the autoencoder."""
    ae = pipe.ae
    if opts.height and opts.width:
        height, width = opts.height, opts.width
    else:
        height, width = inference_size(opts.resolution, opts.aspect_ratio, ae.spatial_compression * pipe.dit.config.patch_size)
    ae.latent_frames(opts.num_frames)  # validates the frame count against the autoencoder's rule
    latent_shape = inference_latent_shape(
        1, opts.num_frames, height, width, latent_channels=ae.latent_channels, time_compression=ae.time_compression,
        spatial_compression=ae.spatial_compression, is_causal=ae.is_causal, patch_size=pipe.dit.config.patch_size,
    )
    return height, width, latent_shape


def _encode_reference(pipe: Pipeline, image_path: str, latent_shape, opts: GenerateOptions, device, dtype):
    """The reference image's latent, encoded at the padded size of the noise (latent size x spatial compression)."""
    ae = pipe.ae
    ref = _load_reference(image_path, latent_shape[3] * ae.spatial_compression, latent_shape[4] * ae.spatial_compression)
    with torch.no_grad(), _on_device([ae], device, opts.offload):
        return ae.encode(ref.to(device=device, dtype=dtype), generator=torch.Generator(device).manual_seed(opts.seed))


def _encode_prompt(pipe: Pipeline, opts: GenerateOptions, prompt: str, device, dtype):
    """(text, null text, the t2i2v image prompt's text or None) embeddings of one prompt."""
    caption = (inference_caption(prompt, fps=opts.fps, motion_score=opts.motion_score)
               if opts.motion_score is not None else prompt)
    with torch.no_grad(), _on_device([pipe.text.t5, pipe.text.clip], device, opts.offload):
        text = pipe.text.encode([caption])
        null = pipe.text.encode([opts.negative_prompt]) if opts.negative_prompt else pipe.text.null()
        image_text = pipe.text.encode([prompt]) if opts.t2i2v else None  # the image prompt has no suffix
    text = {k: v.to(device=device, dtype=dtype) for k, v in text.items()}
    null = {k: v.to(device=device, dtype=dtype) for k, v in null.items()}
    return text, null, image_text


def _draw_first_frame(pipe: Pipeline, opts: GenerateOptions, image_text, png_path: Path, device, dtype) -> Path:
    """t2i2v: the image model draws the first frame from the prompt, saved as a PNG next to the video."""
    from .t2i import text_to_image

    ih, iw = _image_size(opts, pipe.ae.spatial_compression * pipe.dit.config.patch_size)
    image_text = {k: v.to(device=device, dtype=dtype) for k, v in image_text.items()}
    with torch.no_grad(), _on_device([pipe.image.dit, pipe.image.ae], device, opts.offload):
        image = text_to_image(pipe.image, image_text, height=ih, width=iw, steps=opts.steps,
                              guidance=opts.image_guidance, seed=opts.seed, device=device, dtype=dtype,
                              progress=opts.progress)
    return _save_png(image, png_path)


def _decode(pipe: Pipeline, opts: GenerateOptions, latent, cond_type: str, height: int, width: int, device, dtype):
    ae = pipe.ae
    with torch.no_grad(), _on_device([ae], device, opts.offload):
        video = ae.decode(latent.to(device=device, dtype=dtype))[0, :, : opts.num_frames, :height, :width]
        if not opts.keep_i2v_pad_frames:
            video = drop_i2v_pad_frames(video, cond_type, is_causal=ae.is_causal,
                                        time_compression=ae.time_compression, dim=1)
    return video


def generate(opts: GenerateOptions, pipeline: Pipeline | None = None) -> GenerateResult:
    _check_options(opts)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch_dtype(opts.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    clock = _PhaseClock(device)
    with clock.phase("load"):
        pipe = pipeline or build_pipeline(opts, device, dtype)
        height, width, latent_shape = _video_geometry(pipe, opts)
        if opts.t2i2v and pipe.image is None:
            raise ValueError("t2i2v needs a pipeline built with t2i2v=True (it holds the image model)")
        denoiser = _prepare_dit(pipe, opts, device)
    cond_type = "i2v_head" if opts.t2i2v else opts.cond_type
    ae = pipe.ae
    ref_latent = None
    if opts.ref_image:
        with clock.phase("reference_encode"):
            ref_latent = _encode_reference(pipe, opts.ref_image, latent_shape, opts, device, dtype)

    result = GenerateResult([], height=height, width=width, num_frames=opts.num_frames)
    for index, prompt in enumerate(opts.prompts):
        with clock.phase("text"):
            text, null, image_text = _encode_prompt(pipe, opts, prompt, device, dtype)
        path = Path(opts.out) if (opts.out and len(opts.prompts) == 1) else Path(opts.out_dir) / _file_name(prompt, index)
        if opts.t2i2v:
            with clock.phase("image"):
                png = _draw_first_frame(pipe, opts, image_text, path.with_suffix(".png"), device, dtype)
            with clock.phase("reference_encode"):
                # As Open-Sora does: the PNG, resized/cropped to the video's (padded) size, is the i2v_head reference.
                ref_latent = _encode_reference(pipe, str(png), latent_shape, opts, device, dtype)
            result.images.append(png)
        with clock.phase("dit"), torch.no_grad():
            latent = sample(
                denoiser, text=text, null_text=null, latent_shape=latent_shape, cond_type=cond_type,
                ref_latent=ref_latent, steps=opts.steps, guidance_text=opts.guidance_text,
                guidance_image=opts.guidance_image, seed=opts.seed, device=device, dtype=dtype,
                progress=opts.progress, is_causal=ae.is_causal, time_compression=ae.time_compression,
            )
        with clock.phase("vae_decode"):
            video = _decode(pipe, opts, latent, cond_type, height, width, device, dtype)
            result.num_frames = video.shape[1]
        with clock.phase("write"):
            frames = to_uint8_frames(video)
            result.paths.append(write_video(path, frames, fps=opts.fps))
            if opts.keep_outputs:
                result.latents.append(latent[0].float().cpu())
                result.frames.append(torch.from_numpy(frames))
    result.seconds = clock.seconds
    result.peak_memory_by_phase_gb = clock.peaks
    result.peak_memory_gb = max(clock.peaks.values()) if clock.peaks else None
    return result
