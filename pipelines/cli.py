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


def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="raw videos -> 2-8 s H.264 clips + clip table",
                       description="Probe, rule-check, shot-split, crop and re-encode raw videos (spec D.1, D.2).")
    p.add_argument("inputs", help="a folder of videos or a manifest (.csv/.parquet/.jsonl with path[,text])")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-duration", type=float, default=2.0)
    p.add_argument("--min-bpp", type=float, default=0.02)
    p.add_argument("--min-fps", type=float, default=16)
    p.add_argument("--clip-min", type=float, default=2.0)
    p.add_argument("--clip-max", type=float, default=8.0)
    p.add_argument("--max-fps", type=float, default=30)
    p.add_argument("--max-long-side", type=int, default=1080)
    p.add_argument("--scene-threshold", type=float, default=15.0, help="ffmpeg scdet score (0-100) for a cut")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args) -> int:
    from components.ingest import ingest

    r = ingest(args.inputs, args.out_dir, workers=args.workers, min_duration=args.min_duration,
               min_bpp=args.min_bpp, min_fps=args.min_fps, clip_min=args.clip_min, clip_max=args.clip_max,
               max_fps=args.max_fps, max_long_side=args.max_long_side, scene_threshold=args.scene_threshold,
               progress=not args.no_progress)
    print(r.clips_path)
    print(json.dumps({"clips": len(r.clips), "rejected": r.counts, "processed": r.processed, "skipped": r.skipped,
                      "seconds": round(r.seconds, 3)}), file=sys.stderr)
    return 0


def _add_sample_data(sub) -> None:
    p = sub.add_parser("sample-data", help="write the generated sample video set with ground truth")
    p.add_argument("--out-dir", default="data/sample")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_sample_data)


def _run_sample_data(args) -> int:
    from components.sample_data import make_sample_videos

    print(make_sample_videos(args.out_dir, seed=args.seed))
    return 0


def _add_filter(sub) -> None:
    p = sub.add_parser("filter", help="score clips and build the 256px/768px data pyramid",
                       description="Score a clip table (motion, blur, jitter, dedup, aesthetic, OCR), write the "
                                   "256px and 768px sets plus the full table with rejection reasons, validate, "
                                   "and optionally version the result with DVC.")
    p.add_argument("--table", required=True, help="clip table (.parquet or .csv) from the ingest step")
    p.add_argument("--out-dir", required=True, help="dataset folder (replaced only after validation passes)")
    p.add_argument("--aesthetic-weights", help="local LAION aesthetic predictor folder (else: not run)")
    p.add_argument("--ocr-weights", help="local PaddleOCR detector folder (else: not run)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set-256", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a 256px threshold, e.g. motion_min=0.5 (repeatable)")
    p.add_argument("--set-768", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a 768px threshold (repeatable)")
    p.add_argument("--dvc-repo", help="track --out-dir with DVC in this repo (init if needed) and push")
    p.add_argument("--dvc-remote", help="DVC remote (default: a local folder next to the repo)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_filter)


def _run_filter(args) -> int:
    import dataclasses

    from components.filter import THRESHOLDS_256, THRESHOLDS_768, run_filter

    def thresholds(base, items):
        kw = {}
        for item in items:
            key, _, raw = item.partition("=")
            if key not in {f.name for f in dataclasses.fields(base)}:
                raise ValueError(f"unknown threshold {key!r}")
            kw[key] = None if raw.lower() in ("none", "") else json.loads(raw)
        return dataclasses.replace(base, **kw)

    result = run_filter(args.table, args.out_dir, thresholds_256=thresholds(THRESHOLDS_256, args.set_256),
                        thresholds_768=thresholds(THRESHOLDS_768, args.set_768),
                        aesthetic_weights=args.aesthetic_weights, ocr_weights=args.ocr_weights,
                        num_workers=args.workers, progress=not args.no_progress)
    summary = {"out_dir": str(result.out_dir), "counts": result.counts, "files": result.files}
    if args.dvc_repo:
        from components.filter.versioning import version_dataset

        summary["dvc"] = version_dataset(args.dvc_repo, args.out_dir, input_path=args.table, remote=args.dvc_remote)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraflow", description="Open-Sora 2.0 training system")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_train(sub)
    _add_ingest(sub)
    _add_sample_data(sub)
    _add_filter(sub)
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
