"""`soraflow sample-data`: the generated sample video set with its ground truth."""

from __future__ import annotations



def add(sub) -> None:
    p = sub.add_parser("sample-data", help="write the generated sample video set with ground truth")
    p.add_argument("--out-dir", default="raw/sample")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.components.sample_data import make_sample_videos

    print(make_sample_videos(args.out_dir, seed=args.seed))
    return 0
