"""`soraflow data`: the curated dataset under DVC (`data/` pinned by `data.dvc`)."""

from __future__ import annotations

import json
import sys


def add(sub) -> None:
    p = sub.add_parser("data", help="version the curated dataset with DVC (data/ + data.dvc)",
                       description="The curated dataset is `data/` in the repository, pinned by `data.dvc`.")
    p.add_argument("action", choices=["version", "push", "pull", "status"])
    p.add_argument("--repo", default=".", help="the project repository (default: the current folder)")
    p.add_argument("--from", dest="curated", help="version: the filter output folder to publish as data/")
    p.add_argument("--remote", help="version: default remote URL/folder to set; push/pull/status: remote name")
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.components.data import DataError, dataset
    from soraflow.common.dvc import DvcError

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
