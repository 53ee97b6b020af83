"""The `soraflow` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _add_generate(sub) -> None:
    from components.generate import PIPELINES

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
    p.add_argument("--num-frames", type=int, default=129)
    p.add_argument("--resolution", default="256px")
    p.add_argument("--aspect-ratio", default="16:9")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5, help="text guidance scale")
    p.add_argument("--guidance-img", type=float, default=3.0, help="image guidance scale")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--motion-score", type=int, default=4, help="appended to the prompt; -1 to append nothing")
    p.add_argument("--cond-type", default="t2v", choices=["t2v", "i2v_head", "i2v_tail", "i2v_loop"])
    p.add_argument("--ref", help="reference image for i2v_* conditions")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--out", help="output file (one prompt)")
    p.add_argument("--out-dir", default="samples", help="output folder: '{prompt}-{index}.mp4'")
    p.add_argument("--no-fast", action="store_true", help="plain eager DiT (no fused projections / compile)")
    p.add_argument("--offload", action="store_true", help="text encoders on the CPU")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from components.generate import GenerateOptions, generate

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
        out=args.out, out_dir=args.out_dir, fast=not args.no_fast, offload=args.offload,
    )
    result = generate(opts)
    for path in result.paths:
        print(path)
    print(json.dumps({"seconds": {k: round(v, 3) for k, v in result.seconds.items()},
                      "peak_memory_gb": result.peak_memory_gb, "size": [result.num_frames, result.height, result.width]}),
          file=sys.stderr)
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a stage from a recipe (torchx local_cwd, or print the k8s job)",
                       description="Launch a training recipe through torchx with torchrun's elastic agent.")
    p.add_argument("--recipe", required=True, help="e.g. tiny-cpu-stage1, stage1-256px-h200x8")
    p.add_argument("--run-dir", default="runs/train")
    p.add_argument("--nproc", type=int, default=1, help="processes per node")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--override", action="append", default=[], help="dotted.key=json-value, repeatable")
    p.add_argument("--scheduler", choices=["local_cwd", "kubernetes-dryrun"], default="local_cwd")
    p.add_argument("--image", default=None, help="container image (kubernetes)")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from training.launch import DEFAULT_IMAGE, LaunchSpec, kubernetes_dryrun, run_local
    from training.recipes import get_recipe
    from training.train import parse_overrides

    get_recipe(args.recipe)  # unknown names fail here, before any process starts
    spec = LaunchSpec(recipe=args.recipe, run_dir=args.run_dir, nnodes=args.nnodes, nproc_per_node=args.nproc,
                      gpus_per_node=args.gpus_per_node, max_restarts=args.max_restarts,
                      overrides=parse_overrides(args.override), image=args.image or DEFAULT_IMAGE)
    if args.scheduler == "kubernetes-dryrun":
        print(json.dumps(kubernetes_dryrun(spec), indent=2, default=str))
        return 0
    status = run_local(spec, log_dir=f"{args.run_dir}/torchx-logs")
    print(f"training {args.recipe}: {status.state if status else 'unknown'}; run dir {args.run_dir}")
    return 0 if status is not None and str(status.state).endswith("SUCCEEDED") else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraflow", description="Open-Sora 2.0 training system")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"soraflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
