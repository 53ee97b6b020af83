"""`soraflow filter`: score clips, build the 256px/768px sets, validate, optionally version with DVC."""

from __future__ import annotations

import json

from soraflow.cli.common import UsageError, add_pushgateway_flag
from soraflow.common.overrides import parse_pairs


def add(sub) -> None:
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
                   help="override a 768px threshold, e.g. min_short_side=480 (default 576: the smallest "
                        "768px bucket's short side) (repeatable)")
    p.add_argument("--dvc-repo", help="track --out-dir with DVC in this repo (init if needed) and push")
    p.add_argument("--dvc-remote", help="DVC remote (default: a local folder next to the repo)")
    p.add_argument("--no-progress", action="store_true")
    add_pushgateway_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.components.filter import THRESHOLDS_256, THRESHOLDS_768, as_thresholds, run_filter

    def thresholds(base, items, option):
        try:
            return as_thresholds(parse_pairs(items, option, "FIELD=VALUE", none_words=True), base, option)
        except ValueError as exc:  # an unknown name or a wrong type: the user's flag, so a usage error
            raise UsageError(str(exc)) from None

    result = run_filter(args.table, args.out_dir, thresholds_256=thresholds(THRESHOLDS_256, args.set_256, "--set-256"),
                        thresholds_768=thresholds(THRESHOLDS_768, args.set_768, "--set-768"),
                        aesthetic_weights=args.aesthetic_weights, ocr_weights=args.ocr_weights,
                        num_workers=args.workers, progress=not args.no_progress)
    summary = {"out_dir": str(result.out_dir), "counts": result.counts, "files": result.files}
    if args.dvc_repo:
        from soraflow.components.filter.versioning import version_dataset

        summary["dvc"] = version_dataset(args.dvc_repo, args.out_dir, input_path=args.table, remote=args.dvc_remote)
    print(json.dumps(summary, indent=2, default=str))
    if args.pushgateway:
        from soraflow.monitoring.batch import filter_groups, push_or_warn

        push_or_warn(args.pushgateway, "filter", filter_groups(result.counts, seconds=result.seconds))
    return 0
