"""The `soraflow` command line: one module per command (`cli/<command>.py`, each with `add(sub)` declaring its
flags and `run(args)` doing it), the parser and the error-to-exit-code rule in `cli/main.py`."""

from soraflow.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
