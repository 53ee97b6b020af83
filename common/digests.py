"""File digests that tie pipeline steps together: md5 is what DVC records for a file, sha256 what the trainer's
checkpointed `data_revision` hashes. Each curation step records both for what it read and wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_digests(path: str | Path) -> tuple[str, str]:
    """(md5, sha256) of a file's bytes, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks (sources, weight files, checkpoints of any size)."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def table_record(path: str | Path, relative_to: str | Path | None = None) -> dict[str, Any]:
    """{"table", "md5", "sha256", "bytes"} for a table file (its name relative to `relative_to` if given)."""
    path = Path(path)
    md5, sha = file_digests(path)
    name = str(path.relative_to(relative_to)) if relative_to is not None else str(path)
    return {"table": name, "md5": md5, "sha256": sha, "bytes": path.stat().st_size}
