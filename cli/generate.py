"""`soraflow generate`: text/image to video with the inference library."""

from __future__ import annotations

import json
import sys

from soraflow.cli.common import add_video_size_flags
from soraflow.common.dtypes import DTYPE_NAMES


def add(sub) -> None:
    from soraflow.inference import PIPELINES

    p = sub.add_parser("generate", help="text/image to video", description="Generate videos from prompts.")
    p.add_argument("--prompt", action="append", dest="prompts", help="a prompt (repeat for several)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line")
    p.add_argument("--model", "--config", dest="model", default="opensora2", choices=sorted(PIPELINES),
                   help="model preset (default opensora2: the 11B MMDiT + HunyuanVideo VAE)")
    p.add_argument("--weights-dir", help="folder laid out like Open-Sora's ckpts/ (see docs in generate.py)")
    p.add_argument("--dit", help="DiT safetensors (overrides --weights-dir)")
    p.add_argument("--ae", help="autoencoder safetensors (overrides --weights-dir)")
    p.add_argument("--t5", help="T5 folder (overrides --weights-dir)")
    p.add_argument("--clip", help="CLIP folder (overrides --weights-dir)")
    p.add_argument("--random-init", action="store_true", help="random DiT/AE weights (timing, local demo)")
    add_video_size_flags(p)
    p.add_argument("--guidance", type=float, default=7.5, help="text guidance scale")
    p.add_argument("--guidance-img", type=float, default=3.0, help="image guidance scale")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--motion-score", type=int, default=4, help="appended to the prompt; -1 to append nothing")
    p.add_argument("--cond-type", default="t2v", choices=["t2v", "i2v_head", "i2v_tail", "i2v_loop"])
    p.add_argument("--ref", help="reference image for i2v_* conditions")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=DTYPE_NAMES)
    p.add_argument("--out", help="output file (one prompt)")
    p.add_argument("--out-dir", default="samples", help="output folder: '{prompt}-{index}.mp4'")
    p.add_argument("--no-fast", action="store_true", help="plain eager DiT (no fused projections / compile)")
    p.add_argument("--offload", action="store_true",
                   help="text encoders and autoencoders (and the t2i2v image model) wait on the CPU and visit the "
                        "GPU only for their phase")
    p.add_argument("--fp8", action="store_true", help="e4m3 matmuls for the DiT's block linears (Hopper)")
    p.add_argument("--t2i2v", action="store_true",
                   help="text-to-image-to-video: a FLUX-layout image model draws the first frame, then i2v_head")
    p.add_argument("--image-model", help="t2i2v image model: preset (flux1-dev, tiny-flux) or a FLUX-layout file")
    p.add_argument("--image-ae", help="t2i2v FLUX autoencoder: diffusers folder or ae.safetensors")
    p.add_argument("--image-resolution", default="768px", help="t2i2v image resolution (same aspect ratio)")
    p.add_argument("--image-guidance", type=float, default=4.0, help="t2i2v embedded (distilled) guidance")
    p.add_argument("--dcae-scaling-factor", default="preset",
                   help="Video DC-AE latent scaling: 'preset' (default; none for opensora2-hc as released, 0.493 "
                        "for tiny-hc), 'none', or a number such as 0.493 (the value the hc DiT was trained with)")
    p.add_argument("--keep-i2v-pad-frames", action="store_true",
                   help="non-causal AE i2v: keep the 3 decoded frames next to the reference frame that the "
                        "released sampler drops")
    p.set_defaults(func=run)


def _scaling_arg(value: str):
    if value in ("preset", "none"):
        return None if value == "none" else value
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"soraflow generate: --dcae-scaling-factor must be 'preset', 'none' or a number, "
                         f"got {value!r}") from None


def run(args) -> int:
    from soraflow.inference import GenerateOptions, generate

    prompts = list(args.prompts or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as fh:
            prompts += [line.strip() for line in fh if line.strip()]
    if not prompts:
        print("soraflow generate: give --prompt or --prompt-file", file=sys.stderr)
        return 2
    opts = GenerateOptions(
        prompts=prompts, model=args.model, weights_dir=args.weights_dir, dit=args.dit, ae=args.ae, t5=args.t5,
        clip=args.clip, random_init=args.random_init, num_frames=args.num_frames, resolution=args.resolution,
        aspect_ratio=args.aspect_ratio, height=args.height, width=args.width, steps=args.steps,
        guidance_text=args.guidance, guidance_image=args.guidance_img, seed=args.seed, fps=args.fps,
        motion_score=None if args.motion_score < 0 else args.motion_score, cond_type=args.cond_type,
        ref_image=args.ref, negative_prompt=args.negative_prompt, device=args.device, dtype=args.dtype,
        out=args.out, out_dir=args.out_dir, fast=not args.no_fast, offload=args.offload, fp8=args.fp8,
        t2i2v=args.t2i2v, image_model=args.image_model, image_ae=args.image_ae,
        image_resolution=args.image_resolution, image_guidance=args.image_guidance,
        dcae_scaling_factor=_scaling_arg(args.dcae_scaling_factor), keep_i2v_pad_frames=args.keep_i2v_pad_frames,
    )
    result = generate(opts)
    for path in result.images + result.paths:
        print(path)
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in result.seconds.items()},
                      "peak_memory_gb": result.peak_memory_gb, "size": [result.num_frames, result.height, result.width]}),
          file=sys.stderr)
    return 0
