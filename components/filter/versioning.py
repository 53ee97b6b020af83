"""The filter's "version this output": track a filter output folder with DVC and push it (`soraflow filter
--dvc-repo`). The DVC calls themselves are `soraflow.common.dvc`'s; the repository's own `data/` is `components/data`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from soraflow.common.digests import file_md5
from soraflow.common.dvc import ensure_dvc_repo, push, read_pointer, status, track

__all__ = ["version_dataset"]


def version_dataset(repo_dir: str | Path, data_path: str | Path, *, input_path: str | Path | None = None,
                    remote: str | Path | None = None, do_push: bool = True) -> dict:
    """init-if-needed → track → push; returns {"input_md5", "output": DvcVersion fields, "status"}."""
    repo = ensure_dvc_repo(repo_dir, remote)
    version = track(repo, data_path)
    if do_push:
        push(repo)
    result = {"output": asdict(version),
              "status": status(repo) if do_push else None}
    if input_path is not None:
        p = Path(input_path)
        dvc_ptr = p.with_name(p.name + ".dvc")
        result["input_md5"] = read_pointer(dvc_ptr)["md5"] if dvc_ptr.exists() else (file_md5(p) if p.is_file() else None)
    return result
