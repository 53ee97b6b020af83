"""`soraflow train`: a training recipe through torchx (locally, as a pipeline stage, or the k8s job)."""

from __future__ import annotations

import json
import sys

from soraflow.cli.common import print_progress
from soraflow.common.stages import AE_STAGES, STAGES


def add(sub) -> None:
    p = sub.add_parser("train", help="train a stage from a recipe (torchx local_cwd, or print the k8s job)",
                       description="Launch a training recipe through torchx with torchrun's elastic agent. With "
                                   "--stage, run it as a pipeline stage (inputs checked, model card, metrics).")
    p.add_argument("--recipe", required=True, help="one of: {recipes}")
    p.add_argument("--stage", default=None,
                   choices=STAGES,
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
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.training.config import resolve
    from soraflow.training.launch import DEFAULT_IMAGE, LaunchSpec, kubernetes_dryrun, run_local
    from soraflow.common.overrides import parse_overrides

    overrides = parse_overrides(args.override)
    # the recipe and every override, typed and range-checked before any process or cluster job starts
    resolve(args.recipe, overrides, run_dir=args.run_dir)
    stage_inputs = args.data_table or args.init_from or args.autoencoder
    if args.stage and args.scheduler == "local_cwd":
        from soraflow.components.train_stage import run_stage

        out = run_stage(args.stage, recipe=args.recipe, run_dir=args.run_dir, data_table=args.data_table,
                        init_from=args.init_from, autoencoder=args.autoencoder, overrides=overrides,
                        nproc=args.nproc, max_restarts=args.max_restarts, progress=print_progress)
        print(json.dumps(out.__dict__, indent=1, default=str))
        return 0
    if stage_inputs and not args.stage:
        print("--data-table/--init-from/--autoencoder need --stage (or use --override)", file=sys.stderr)
        return 2
    if args.stage:  # a dry run: wire the stage inputs into the overrides the job would get (paths unchecked)
        init_key = "ae.path" if args.stage in AE_STAGES else "model.from_pretrained"
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
    status = run_local(spec, log_dir=f"{args.run_dir}/torchx-logs", progress=print_progress)
    print(f"training {args.recipe}: {status.state if status else 'unknown'}; run dir {args.run_dir}")
    return 0 if status is not None and str(status.state).endswith("SUCCEEDED") else 1
