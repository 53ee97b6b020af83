"""`soraflow eval`: sample models on a prompt suite and score them."""

from __future__ import annotations

import json
import sys

from soraflow.common.dtypes import DTYPE_NAMES

from soraflow.cli.common import UsageError, add_video_size_flags
from soraflow.common.overrides import OverrideError, parse_pairs, split_pair

_MODEL_KEYS = ("dit", "ae", "weights_dir", "t5", "clip", "frames", "ae_kind")


def add(sub) -> None:
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
    add_video_size_flags(p)
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
    p.add_argument("--dtype", choices=DTYPE_NAMES)
    p.set_defaults(func=run)


def _parse_eval_model(spec: str, args):
    from soraflow.components.eval import EvalModel

    head, _, opts = spec.partition(":")
    form = "NAME=PRESET[:key=value,...]"
    try:
        name, preset = split_pair(head, f"--model {spec!r}:", form)
        kw = parse_pairs(filter(None, opts.split(",")), f"--model {spec!r}: option", "key=value", typed=False)
    except OverrideError as exc:
        raise UsageError(str(exc)) from None
    if not preset:
        raise UsageError(f"--model {spec!r}: expected {form}")
    bad = [k for k in kw if k not in _MODEL_KEYS]
    if bad:
        raise UsageError(f"--model {spec!r}: bad option {bad[0]!r} (keys: {', '.join(_MODEL_KEYS)})")
    if "frames" in kw:
        kw["num_frames"] = int(kw.pop("frames"))
    kw.setdefault("weights_dir", args.weights_dir)
    return EvalModel(name=name, preset=preset, random_init=args.random_init, **kw)


def run(args) -> int:
    from soraflow.components.eval import run_eval

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
