"""`soraflow submit`: compile, upload a new pipeline version to a KFP endpoint, start a run (or a
recurring run)."""

from __future__ import annotations

import json

from soraflow.cli.common import add_cluster_flags, cluster_settings, parse_recipes
from soraflow.common.overrides import parse_pairs


def add(sub) -> None:
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
    add_cluster_flags(p)
    p.set_defaults(func=run)


def submit_request(args) -> tuple[str, dict]:
    """(start, pipeline parameters) of a `soraflow submit` command line."""
    from soraflow.pipelines.submit import pinned_revision, recipe_params

    params = recipe_params(parse_recipes(args.recipe))
    params.update(parse_pairs(args.param, "--param", "NAME=VALUE", typed=False))
    start = "raw"
    if args.from_revision:
        start = "revision"
        params["data_revision"] = pinned_revision() if args.from_revision == "pinned" else args.from_revision
    return start, params


def run(args) -> int:
    from soraflow.pipelines.submit import submit

    start, params = submit_request(args)
    print(json.dumps(submit(args.host, cluster_settings(args), params=params, experiment=args.experiment,
                            version_name=args.version_name, run_name=args.run_name, namespace=args.namespace,
                            schedule=args.schedule, start=start),
                     indent=2))
    return 0
