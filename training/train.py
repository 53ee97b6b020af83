"""Entry point run by torchrun on every rank: `python -m training.train --recipe NAME [--override k=v ...]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from training.config import apply_overrides
from training.recipes import get_recipe


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--override expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # plain strings need no quotes
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    from training.trainer import Trainer

    cfg = get_recipe(args.recipe)
    cfg.run_dir = args.run_dir
    cfg.checkpoint.dir = f"{args.run_dir}/checkpoints"
    apply_overrides(cfg, parse_overrides(args.override))
    trainer = Trainer(cfg)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        print(json.dumps({"summary": summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
