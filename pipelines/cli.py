"""The `soraflow` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _add_video_size_flags(p) -> None:
    """What a generated video is: frames, size (a resolution name + aspect ratio, or explicit pixels), steps."""
    p.add_argument("--num-frames", type=int, default=129)
    p.add_argument("--resolution", default="256px")
    p.add_argument("--aspect-ratio", default="16:9")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=50)


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
    _add_video_size_flags(p)
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
    p.set_defaults(func=_run_generate)


def _scaling_arg(value: str):
    if value in ("preset", "none"):
        return None if value == "none" else value
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"soraflow generate: --dcae-scaling-factor must be 'preset', 'none' or a number, "
                         f"got {value!r}") from None


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


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a stage from a recipe (torchx local_cwd, or print the k8s job)",
                       description="Launch a training recipe through torchx with torchrun's elastic agent. With "
                                   "--stage, run it as a pipeline stage (inputs checked, model card, metrics).")
    p.add_argument("--recipe", required=True, help="one of: {recipes}")
    p.add_argument("--stage", default=None,
                   choices=["vae_train", "dit_stage1", "dit_stage2", "dit_stage3", "distill"],
                   help="run as this pipeline stage (must match the recipe's stage)")
    p.add_argument("--data-table", default=None, help="clip table (.parquet or .csv) for --stage")
    p.add_argument("--init-from", default=None, help="previous stage's model.safetensors (stage 1: FLUX weights)")
    p.add_argument("--autoencoder", default=None, help="autoencoder weights (distill: the Video DC-AE)")
    p.add_argument("--run-dir", default="runs/train")
    p.add_argument("--nproc", type=int, default=1, help="processes per node")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--override", action="append", default=[],
                   help="dotted.key=json-value, repeatable, e.g. optim.lr=1e-5; checked against the config's types")
    p.add_argument("--scheduler", choices=["local_cwd", "kubernetes-dryrun"], default="local_cwd")
    p.add_argument("--image", default=None, help="container image (kubernetes)")
    p.set_defaults(func=_run_train)


def _print_progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _run_train(args) -> int:
    from training.config import resolve
    from training.launch import DEFAULT_IMAGE, LaunchSpec, kubernetes_dryrun, run_local
    from training.train import parse_overrides

    overrides = parse_overrides(args.override)
    # the recipe and every override, typed and range-checked before any process or cluster job starts
    resolve(args.recipe, overrides, run_dir=args.run_dir)
    stage_inputs = args.data_table or args.init_from or args.autoencoder
    if args.stage and args.scheduler == "local_cwd":
        from components.train_stage import run_stage

        out = run_stage(args.stage, recipe=args.recipe, run_dir=args.run_dir, data_table=args.data_table,
                        init_from=args.init_from, autoencoder=args.autoencoder, overrides=overrides,
                        nproc=args.nproc, max_restarts=args.max_restarts, progress=_print_progress)
        print(json.dumps(out.__dict__, indent=1, default=str))
        return 0
    if stage_inputs and not args.stage:
        print("--data-table/--init-from/--autoencoder need --stage (or use --override)", file=sys.stderr)
        return 2
    if args.stage:  # a dry run: wire the stage inputs into the overrides the job would get (paths unchecked)
        init_key = "ae.path" if args.stage == "vae_train" else "model.from_pretrained"
        for key, value in (("data.table", args.data_table), (init_key, args.init_from),
                           ("ae.path", args.autoencoder)):
            if value:
                overrides[key] = value
    spec = LaunchSpec(recipe=args.recipe, run_dir=args.run_dir, nnodes=args.nnodes, nproc_per_node=args.nproc,
                      gpus_per_node=args.gpus_per_node, max_restarts=args.max_restarts,
                      overrides=overrides, image=args.image or DEFAULT_IMAGE)
    if args.scheduler == "kubernetes-dryrun":  # the Volcano Job as YAML: `... | kubectl apply -f -` takes it
        import yaml
        from kubernetes.client import ApiClient

        print(yaml.safe_dump(ApiClient().sanitize_for_serialization(kubernetes_dryrun(spec).resource),
                             sort_keys=False), end="")
        return 0
    status = run_local(spec, log_dir=f"{args.run_dir}/torchx-logs", progress=_print_progress)
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
    p.add_argument("--scene-threshold", type=float, default=15.0, help="scene score (FFmpeg scdet, 0-100) that starts a new shot")
    p.add_argument("--no-progress", action="store_true")
    _add_pushgateway_flag(p)
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
    if args.pushgateway:
        from monitoring.batch import ingest_groups, push_or_warn

        push_or_warn(args.pushgateway, "ingest", ingest_groups(r))
    return 0


def _add_sample_data(sub) -> None:
    p = sub.add_parser("sample-data", help="write the generated sample video set with ground truth")
    p.add_argument("--out-dir", default="raw/sample")
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
    _add_pushgateway_flag(p)
    p.set_defaults(func=_run_filter)


def _run_filter(args) -> int:
    import dataclasses

    from components.filter import THRESHOLDS_256, THRESHOLDS_768, run_filter

    def thresholds(base, items):
        kw = {}
        for item in items:
            key, _, raw = item.partition("=")
            if key not in {f.name for f in dataclasses.fields(base)}:
                raise UsageError(f"unknown threshold {key!r}")
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
    if args.pushgateway:
        from monitoring.batch import filter_groups, push_or_warn

        push_or_warn(args.pushgateway, "filter", filter_groups(result.counts, seconds=result.seconds))
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="version the curated dataset with DVC (data/ + data.dvc)",
                       description="The curated dataset is `data/` in the repository, pinned by `data.dvc`.")
    p.add_argument("action", choices=["version", "push", "pull", "status"])
    p.add_argument("--repo", default=".", help="the project repository (default: the current folder)")
    p.add_argument("--from", dest="curated", help="version: the filter output folder to publish as data/")
    p.add_argument("--remote", help="version: default remote URL/folder to set; push/pull/status: remote name")
    p.set_defaults(func=_run_data)


def _run_data(args) -> int:
    from components.data import DataError, dataset
    from components.filter.versioning import DvcError

    try:
        if args.action == "version":
            out = dataset.version(args.repo, args.curated, remote=args.remote)
        else:
            out = getattr(dataset, args.action)(args.repo, args.remote)
    except (DataError, DvcError) as exc:
        print(f"soraflow data {args.action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0 if args.action != "status" or out["clean"] else 1


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="sample models on a prompt suite and score them (VBench / offline metrics)",
                       description="Sample every --model on the same prompts and seeds, score the videos (real "
                                   "VBench where its weights are mounted, labelled offline metrics everywhere), "
                                   "and write metrics.json, report.md and report.html.")
    p.add_argument("--model", action="append", dest="models", default=[], metavar="NAME=PRESET[:k=v,...]",
                   help="repeatable; keys: dit, ae, weights_dir, t5, clip, frames, ae_kind "
                        "(e.g. stage3=opensora2:dit=ckpts/s3.safetensors,ae=ckpts/hunyuan_vae.safetensors)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--suite", default="mini", help="'mini' (shipped) or a VBench_full_info.json-format file")
    p.add_argument("--max-prompts", type=int)
    p.add_argument("--seeds", default="0", help="comma-separated; sample i of every prompt uses seed i")
    _add_video_size_flags(p)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--random-init", action="store_true", help="random DiT/AE weights for every model (local run)")
    p.add_argument("--weights-dir", help="default weights folder for models without their own paths")
    p.add_argument("--vbench-python", help="VBench's own interpreter (else VBench is not run)")
    p.add_argument("--vbench-weights", help="VBench weights root (VBENCH_CACHE_DIR layout, see vbench_runner.py)")
    p.add_argument("--vbench-mode", default="vbench_standard", choices=["vbench_standard", "custom_input"])
    p.add_argument("--reference-clips", help="held-out clips: a clip table or a folder (AE PSNR/SSIM, FM loss)")
    p.add_argument("--max-reference-clips", type=int, default=8)
    p.add_argument("--samples-manifest", help="score an existing manifest.jsonl instead of sampling")
    p.add_argument("--history", action="append", default=[], help="earlier metrics.json for trend plots")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"])
    p.set_defaults(func=_run_eval)


def _parse_eval_model(spec: str, args):
    from components.eval import EvalModel

    head, _, opts = spec.partition(":")
    name, eq, preset = head.partition("=")
    if not eq or not name or not preset:
        raise UsageError(f"--model {spec!r}: expected NAME=PRESET[:key=value,...]")
    kw = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in ("dit", "ae", "weights_dir", "t5", "clip", "frames", "ae_kind"):
            raise UsageError(f"--model {spec!r}: bad option {item!r} (keys: dit, ae, weights_dir, t5, clip, "
                             "frames, ae_kind)")
        kw["num_frames" if key == "frames" else key] = int(value) if key == "frames" else value
    kw.setdefault("weights_dir", args.weights_dir)
    return EvalModel(name=name, preset=preset, random_init=args.random_init, **kw)


def _run_eval(args) -> int:
    from components.eval import run_eval

    if not args.models and not args.samples_manifest:
        print("soraflow eval: give at least one --model NAME=PRESET (or --samples-manifest)", file=sys.stderr)
        return 2
    models = [_parse_eval_model(s, args) for s in args.models]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    r = run_eval(models, args.out_dir, suite=args.suite, seeds=seeds, num_frames=args.num_frames,
                 resolution=args.resolution, aspect_ratio=args.aspect_ratio, height=args.height, width=args.width,
                 steps=args.steps, fps=args.fps, max_prompts=args.max_prompts, vbench_python=args.vbench_python,
                 vbench_weights=args.vbench_weights, vbench_mode=args.vbench_mode,
                 reference_clips=args.reference_clips, max_reference_clips=args.max_reference_clips,
                 samples_manifest=args.samples_manifest, history=args.history, device=args.device,
                 dtype=args.dtype)
    print(json.dumps({"metrics": str(r.metrics_json), "report_md": str(r.report_md),
                      "report_html": str(r.report_html), "manifest": str(r.manifest)}, indent=2))
    return 0


def _add_pipeline_commands(sub) -> None:
    p = sub.add_parser("run", help="run the whole DAG locally through the KFP local runner (tiny recipes)",
                       description="The embedded default: sample videos -> ingest -> filter -> vae_train -> DiT "
                                   "stages 1-3 -> distill -> eval, each step a KFP task run by kfp.local.")
    p.add_argument("--out-dir", default="soraflow-run")
    p.add_argument("--raw", help="a folder of videos or a manifest (default: generate the sample videos)")
    p.add_argument("--recipe", action="append", default=[], metavar="STEP=RECIPE",
                   help="e.g. dit_stage1=tiny-cpu-stage1")
    p.add_argument("--override", action="append", default=[], metavar="STEP.KEY=JSON",
                   help="a step's setting, e.g. dit_stage1.max_steps=4 or ingest.clip_max=4 (repeatable)")
    p.add_argument("--nproc", type=int, default=1, help="training processes per step (gloo)")
    p.add_argument("--suite", default="heldout",
                   help="eval prompt suite: 'heldout' (the held-out clips' captions), 'mini' or a "
                        "VBench_full_info.json file")
    p.add_argument("--from-revision", metavar="MD5|pinned",
                   help="run the retraining pipeline: start from this curated dataset revision ('pinned': the one "
                        "data.dvc pins), fetched from the DVC remote, instead of ingest + filter")
    p.add_argument("--dvc-remote", help="where --from-revision fetches from (default: this repo's DVC remote)")
    p.add_argument("--hunyuan-vae", metavar="PATH",
                   help="HunyuanVideo VAE weights (safetensors) for DiT stages 1-3 instead of training one in the "
                        "hunyuan_vae step")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu"],
                   help="recipes and eval sizes for the whole DAG: 'cpu' (tiny models, 2 cores) or 'gpu' (one "
                        "80-141 GB GPU: a 351M MMDiT, a half-width HunyuanVideo VAE, the full-width Video DC-AE)")
    p.set_defaults(func=_run_pipeline_local)

    p = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    p.add_argument("--start", choices=["raw", "revision"], default="raw",
                   help="raw: curate from a manifest; revision: the retraining pipeline from a data.dvc revision")
    p.add_argument("--out", help="default pipelines/compiled/soraflow.yaml (soraflow-retrain.yaml for revision)")
    p.add_argument("--k8s-manifests", metavar="DIR",
                   help="also render KFP Pipeline/PipelineVersion manifests for GitOps (Argo CD) into DIR")
    _add_cluster_flags(p)
    p.set_defaults(func=_run_compile)

    p = sub.add_parser("submit", help="compile, upload a new pipeline version to a KFP endpoint, start a run")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com/pipeline")
    p.add_argument("--experiment", default="soraflow")
    p.add_argument("--version-name")
    p.add_argument("--run-name")
    p.add_argument("--namespace")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, e.g. raw_manifest=gs://bucket/raw/manifest.csv (repeatable)")
    p.add_argument("--recipe", action="append", default=[], metavar="STEP=RECIPE",
                   help="a step's recipe, e.g. dit_stage1=stage1-256px-h200x8 (repeatable)")
    p.add_argument("--schedule", metavar="CRON",
                   help="create a recurring run instead, e.g. '0 0 3 * * 1' (KFP cron: seconds first)")
    p.add_argument("--from-revision", metavar="MD5|pinned",
                   help="submit the retraining pipeline, starting from this dataset revision ('pinned': data.dvc's)")
    _add_cluster_flags(p)
    p.set_defaults(func=_run_submit)


def _add_cluster_flags(p) -> None:
    p.add_argument("--cpu-image", help="CPU step image, REPO@sha256:DIGEST for releases")
    p.add_argument("--gpu-image", help="GPU training image, REPO@sha256:DIGEST for releases")
    p.add_argument("--gpu-pool", help="value of the pool label on the GPU node pool (default gpu-h100)")
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--train-launcher", choices=["volcano", "in_pod"])
    p.add_argument("--release", action="store_true", help="refuse images that are not pinned by digest")


def _cluster_settings(args):
    import dataclasses

    from pipelines.settings import ClusterSettings

    given = {k: v for k, v in (("cpu_image", args.cpu_image), ("gpu_image", args.gpu_image),
                               ("gpu_pool", args.gpu_pool), ("gpus_per_node", args.gpus_per_node),
                               ("train_launcher", args.train_launcher)) if v is not None}
    return dataclasses.replace(ClusterSettings(), **given)


def _step_kv(items: list[str], what: str) -> dict:
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        step, dot, field = key.partition(".")
        if not sep or (what == "override" and not dot):
            raise UsageError(f"--{what} expects {'STEP.KEY=JSON' if what == 'override' else 'STEP=RECIPE'}, "
                             f"got {item!r}")
        if what == "recipe":
            out[step] = raw
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(step, {})[field] = value
    return out


def _run_pipeline_local(args) -> int:
    from pipelines.local_run import run_pipeline_locally

    from components.eval.learning import format_checks

    revision = None
    if args.from_revision:
        from pipelines.submit import pinned_revision

        if args.raw:
            raise UsageError("--raw and --from-revision start the pipeline in two different places: give one")
        revision = pinned_revision() if args.from_revision == "pinned" else args.from_revision
    run = run_pipeline_locally(args.out_dir, raw_manifest=args.raw, overrides=_step_kv(args.override, "override"),
                               recipes=_step_kv(args.recipe, "recipe"), nproc=args.nproc, eval_suite=args.suite,
                               profile=args.profile, data_revision=revision, dvc_remote=args.dvc_remote,
                               hunyuan_vae=args.hunyuan_vae)
    print(f"pipeline finished in {run.seconds:.0f} s; every step's artifacts: {run.run_dir}")
    labels = {"curated": "curated dataset", "split": "train/held-out", "hunyuan_vae": "stage-1-3 AE",
              "dcae": "Video DC-AE", "stage1": "DiT stage 1", "stage2": "DiT stage 2", "stage3": "DiT stage 3",
              "distilled": "distilled DiT", "eval_results": "eval results"}
    for name, label in labels.items():
        print(f"  {label:16s} {run.outputs[name]}")
    print(f"  {'eval report':16s} {run.report_html}")
    if not run.learning:
        print("no learning checks were computed (the eval had no held-out clips)", file=sys.stderr)
        return 1
    checks = run.learning["checks"]
    print("\nDid every trained model beat its initialisation on held-out clips? (gate: fails the run; "
          "target: an absolute quality bar)")
    print(format_checks(checks))
    missed = [c["check"] for c in checks if not c["passed"] and c.get("role") == "target"]
    failed = [c["check"] for c in checks if not c["passed"] and c.get("role") != "target"]
    if missed:
        print(f"\ntargets not met: {', '.join(missed)}")
    if failed:
        print(f"\nFAILED (a trained model did not beat its initialisation, or a hand-off broke): "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nevery trained model beat its initialisation on the held-out clips")
    return 0


def _run_compile(args) -> int:
    from pathlib import Path

    from pipelines.dag import compile_pipeline

    from pipelines.submit import pipeline_name

    out = args.out or f"pipelines/compiled/{pipeline_name(args.start)}.yaml"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    print(compile_pipeline(out, _cluster_settings(args), release=args.release, start=args.start))
    if args.k8s_manifests:
        import subprocess

        renderer = Path(__file__).resolve().parents[1] / "infra" / "gitops" / "render_kfp_manifests.py"
        if not renderer.is_file():
            raise FileNotFoundError(f"{renderer}: --k8s-manifests needs a checkout of the repository")
        subprocess.run([sys.executable, str(renderer), out, "--out-dir", args.k8s_manifests], check=True)
        print(args.k8s_manifests)
    return 0


def submit_request(args) -> tuple[str, dict]:
    """(start, pipeline parameters) of a `soraflow submit` command line."""
    from pipelines.submit import pinned_revision, recipe_params

    params = recipe_params(_step_kv(args.recipe, "recipe"))
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        params[name] = value
    start = "raw"
    if args.from_revision:
        start = "revision"
        params["data_revision"] = pinned_revision() if args.from_revision == "pinned" else args.from_revision
    return start, params


def _run_submit(args) -> int:
    from pipelines.submit import submit

    start, params = submit_request(args)
    print(json.dumps(submit(args.host, _cluster_settings(args), params=params, experiment=args.experiment,
                            version_name=args.version_name, run_name=args.run_name, namespace=args.namespace,
                            schedule=args.schedule, start=start),
                     indent=2))
    return 0


def _add_pushgateway_flag(p) -> None:
    import os

    p.add_argument("--pushgateway", default=os.environ.get("SORAFLOW_PUSHGATEWAY") or None, metavar="HOST:PORT",
                   help="push completion metrics here when the step finishes (default: env SORAFLOW_PUSHGATEWAY; "
                        "run id from env SORAFLOW_RUN_ID)")


def _add_monitor(sub) -> None:
    p = sub.add_parser("monitor", help="local Prometheus + Pushgateway on loopback (Debian packages)",
                       description="Start Debian's prometheus and prometheus-pushgateway on 127.0.0.1 with "
                                   "monitoring/prometheus.yml and the soraflow rules; Ctrl-C stops both.")
    p.add_argument("--data-dir", default="runs/monitor", help="generated config, TSDB and server logs")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--pushgateway-port", type=int, default=9091)
    p.add_argument("--trainer", action="append", default=None, metavar="HOST:PORT",
                   help="trainer exporter target (repeatable; default 127.0.0.1:9464, the metrics_port convention)")
    p.add_argument("--scrape-interval", default=None, help="override the config's (15s), e.g. 5s")
    p.set_defaults(func=_run_monitor)


def _run_monitor(args) -> int:
    from monitoring.local import LocalMonitoring, MonitoringError, serve_until_interrupted

    kw = {"trainer_targets": args.trainer} if args.trainer else {}
    mon = LocalMonitoring(args.data_dir, prometheus_port=args.prometheus_port,
                          pushgateway_port=args.pushgateway_port, scrape_interval=args.scrape_interval, **kw)
    try:
        serve_until_interrupted(mon)
    except MonitoringError as exc:  # a missing server binary or a busy port: an environment problem
        print(f"soraflow monitor: error: {exc}", file=sys.stderr)
        return 1
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, and `{recipes}` in a help text lists the recipe registry (imported only when
    help is printed: it pulls in torch)."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if text and "{recipes}" in text:
            from training.recipes import RECIPES

            text = text.replace("{recipes}", ", ".join(sorted(RECIPES)))
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraflow", description="Open-Sora 2.0 training system")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_train(sub)
    _add_ingest(sub)
    _add_sample_data(sub)
    _add_filter(sub)
    _add_pipeline_commands(sub)
    _add_data(sub)
    _add_eval(sub)
    _add_monitor(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


class UsageError(ValueError):
    """The command line itself is wrong (exit 2, like argparse's own errors)."""


def _exit_code(exc: BaseException) -> int | None:
    """2 for usage errors, 1 for the failures a run can meet (bad input, a failed step, a missing revision),
    None for anything unexpected (the traceback is then the useful output)."""
    from common.video_io import VideoBackendError, VideoReadError
    from components.data import DataError
    from components.filter.filter import FilterError
    from components.filter.validation import ValidationError
    from components.filter.versioning import DvcError
    from components.ingest.ingest import IngestError
    from components.train_stage.stage import StageFailed
    from pipelines.local_run import PipelineRunError
    from training.config import ConfigError

    if isinstance(exc, (UsageError, ConfigError)):
        return 2
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError, VideoBackendError, VideoReadError, IngestError,
                        FilterError, ValidationError, DataError, DvcError, StageFailed, PipelineRunError)):
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    args = parser.parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except Exception as exc:
        code = _exit_code(exc)
        if debug or code is None:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"soraflow {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
