"""What several commands share: the usage error, flag groups, and the progress printer."""

from __future__ import annotations

import os
import sys


class UsageError(ValueError):
    """The command line itself is wrong (exit 2, like argparse's own errors)."""


def add_video_size_flags(p) -> None:
    """What a generated video is: frames, size (a resolution name + aspect ratio, or explicit pixels), steps."""
    p.add_argument("--num-frames", type=int, default=129)
    p.add_argument("--resolution", default="256px")
    p.add_argument("--aspect-ratio", default="16:9")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=50)


def add_pushgateway_flag(p) -> None:
    p.add_argument("--pushgateway", default=os.environ.get("SORAFLOW_PUSHGATEWAY") or None, metavar="HOST:PORT",
                   help="push completion metrics here when the step finishes (default: env SORAFLOW_PUSHGATEWAY; "
                        "run id from env SORAFLOW_RUN_ID)")


def add_cluster_flags(p) -> None:
    p.add_argument("--cpu-image", help="CPU step image, REPO@sha256:DIGEST for releases")
    p.add_argument("--gpu-image", help="GPU training image, REPO@sha256:DIGEST for releases")
    p.add_argument("--gpu-pool", help="value of the pool label on the GPU node pool (default gpu-h100)")
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--train-launcher", choices=["volcano", "in_pod"])
    p.add_argument("--release", action="store_true", help="refuse images that are not pinned by digest")


def cluster_settings(args):
    """The cluster flags given on the command line over the default `ClusterSettings`."""
    import dataclasses

    from soraflow.pipelines.settings import ClusterSettings

    given = {k: v for k, v in (("cpu_image", args.cpu_image), ("gpu_image", args.gpu_image),
                               ("gpu_pool", args.gpu_pool), ("gpus_per_node", args.gpus_per_node),
                               ("train_launcher", args.train_launcher)) if v is not None}
    return dataclasses.replace(ClusterSettings(), **given)


def print_progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def parse_recipes(items) -> dict[str, str]:
    """`--recipe STEP=RECIPE` (repeatable) -> {step: recipe name}."""
    from soraflow.common.overrides import parse_pairs

    return parse_pairs(items, "--recipe", "STEP=RECIPE", typed=False)
