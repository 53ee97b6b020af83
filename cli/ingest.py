"""`soraflow ingest`: raw videos -> 2-8 s clips and a clip table."""

from __future__ import annotations

import json
import sys

from soraflow.cli.common import add_pushgateway_flag


def add(sub) -> None:
    p = sub.add_parser("ingest", help="raw videos -> 2-8 s H.264 clips + clip table",
                       description="Probe, rule-check, shot-split, crop and re-encode raw videos (docs/curation.md).")
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
    add_pushgateway_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.components.ingest import ingest

    r = ingest(args.inputs, args.out_dir, workers=args.workers, min_duration=args.min_duration,
               min_bpp=args.min_bpp, min_fps=args.min_fps, clip_min=args.clip_min, clip_max=args.clip_max,
               max_fps=args.max_fps, max_long_side=args.max_long_side, scene_threshold=args.scene_threshold,
               progress=not args.no_progress)
    print(r.clips_path)
    print(json.dumps({"clips": len(r.clips), "rejected": r.counts, "processed": r.processed, "skipped": r.skipped,
                      "seconds": round(r.seconds, 3)}), file=sys.stderr)
    if args.pushgateway:
        from soraflow.monitoring.batch import ingest_groups, push_or_warn

        push_or_warn(args.pushgateway, "ingest", ingest_groups(r))
    return 0
