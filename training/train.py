"""Entry point run by torchrun on every rank.

    python -m soraflow.training.train --config-json '{...}'            # what the launchers pass: the resolved config
    python -m soraflow.training.train --recipe NAME --run-dir D [--override key=JSON ...]   # by hand, resolved the same way
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from soraflow.common.overrides import parse_overrides
from soraflow.training.config import from_dict, resolve, validate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m soraflow.training.train")
    ap.add_argument("--config-json", help="the resolved config (soraflow.training.config.resolve(...).to_dict())")
    ap.add_argument("--recipe")
    ap.add_argument("--run-dir")
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.config_json:
        if args.recipe or args.override:
            ap.error("--config-json is the whole config: no --recipe/--override with it")
        cfg = validate(from_dict(json.loads(args.config_json)))
    elif args.recipe and args.run_dir:
        cfg = resolve(args.recipe, parse_overrides(args.override), run_dir=args.run_dir)
    else:
        ap.error("give --config-json, or --recipe with --run-dir")

    from soraflow.training.trainer import Trainer

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
