"""What build of soraflow is running: the package version and the source commit, recorded by checkpoints,
the eval's metrics.json and the trainer's `soraflow_build_info` metric."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["package_version", "source_commit"]

UNKNOWN_VERSION = "0+unknown"


def package_version() -> str:
    """The installed distribution's version; "0+unknown" when soraflow runs from a source tree, uninstalled."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("soraflow")
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def source_commit() -> str | None:
    """The commit this code is: env SORAFLOW_GIT_COMMIT (images have no .git and set it at build time), else
    HEAD of the checkout this file sits in, else None."""
    if os.environ.get("SORAFLOW_GIT_COMMIT"):
        return os.environ["SORAFLOW_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
