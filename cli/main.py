"""The `soraflow` parser (every command's module adds its own subcommand) and the one rule that turns an error
into an exit code and a one-line message."""

from __future__ import annotations

import argparse
import sys

from soraflow.cli import compile as compile_cmd
from soraflow.cli import data, eval as eval_cmd, filter as filter_cmd, generate, ingest, monitor, run, sample_data, submit
from soraflow.cli import train
from soraflow.cli.common import UsageError

# in the order `soraflow --help` lists them
COMMANDS = (generate, train, ingest, sample_data, filter_cmd, run, compile_cmd, submit, data, eval_cmd, monitor)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, and `{recipes}` in a help text lists the recipe registry (imported only when
    help is printed: it pulls in torch)."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if text and "{recipes}" in text:
            from soraflow.training.recipes import RECIPES

            text = text.replace("{recipes}", ", ".join(sorted(RECIPES)))
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soraflow", description="Open-Sora 2.0 training system")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def _exit_code(exc: BaseException) -> int | None:
    """2 for usage errors, 1 for the failures a run can meet (bad input, a failed step, a missing revision),
    None for anything unexpected (the traceback is then the useful output)."""
    from soraflow.common.dvc import DvcError
    from soraflow.common.overrides import OverrideError
    from soraflow.common.video_io import VideoBackendError, VideoReadError
    from soraflow.components.data import DataError
    from soraflow.components.filter.filter import FilterError
    from soraflow.components.filter.validation import ValidationError
    from soraflow.components.ingest.ingest import IngestError
    from soraflow.components.train_stage.stage import StageFailed
    from soraflow.pipelines.local_run import PipelineRunError
    from soraflow.training.config import ConfigError

    if isinstance(exc, (UsageError, OverrideError, ConfigError)):
        return 2
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError, VideoBackendError, VideoReadError, IngestError,
                        FilterError, ValidationError, DataError, DvcError, StageFailed, PipelineRunError)):
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    args = parser.parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except Exception as exc:
        code = _exit_code(exc)
        if debug or code is None:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"soraflow {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
