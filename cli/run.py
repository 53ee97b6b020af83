"""`soraflow run`: the whole DAG on this machine through KFP's local runner."""

from __future__ import annotations

import sys

from soraflow.cli.common import UsageError, parse_recipes
from soraflow.common.overrides import parse_step_overrides


def add(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.pipelines.local_run import run_pipeline_locally

    from soraflow.components.eval.learning import format_checks

    revision = None
    if args.from_revision:
        from soraflow.pipelines.submit import pinned_revision

        if args.raw:
            raise UsageError("--raw and --from-revision start the pipeline in two different places: give one")
        revision = pinned_revision() if args.from_revision == "pinned" else args.from_revision
    run = run_pipeline_locally(args.out_dir, raw_manifest=args.raw, overrides=parse_step_overrides(args.override),
                               recipes=parse_recipes(args.recipe), nproc=args.nproc, eval_suite=args.suite,
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
