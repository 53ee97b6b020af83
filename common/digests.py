"""File digests that tie pipeline steps together: md5 is what DVC records for a file, sha256 what the trainer's
checkpointed `data_revision` hashes. Each curation step records both for what it read and wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def _hash_file(path: str | Path, *algorithms: str) -> list[str]:
    """Hex digests of a file's bytes for each named hashlib algorithm, reading the file once in chunks."""
    hashes = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            for h in hashes:
                h.update(chunk)
    return [h.hexdigest() for h in hashes]


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes: what DVC 3 records for a file output."""
    return _hash_file(path, "md5")[0]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (sources, weight files, checkpoints of any size)."""
    return _hash_file(path, "sha256")[0]


def file_digests(path: str | Path) -> tuple[str, str]:
    """(md5, sha256) of a file's bytes, read once."""
    md5, sha = _hash_file(path, "md5", "sha256")
    return md5, sha


def table_record(path: str | Path, relative_to: str | Path | None = None) -> dict[str, Any]:
    """{"table", "md5", "sha256", "bytes"} for a table file (its name relative to `relative_to` if given)."""
    path = Path(path)
    md5, sha = file_digests(path)
    name = str(path.relative_to(relative_to)) if relative_to is not None else str(path)
    return {"table": name, "md5": md5, "sha256": sha, "bytes": path.stat().st_size}
