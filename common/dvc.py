"""The one wrapper of the `dvc` command line (DVC versions the curated dataset: `docs/curation.md`).

`run` calls the `dvc` CLI in a repository with `DVC_NO_ANALYTICS=1` and raises `DvcError` with DVC's own words
when it fails; `ensure_dvc_repo` runs `dvc init` where needed and sets a default remote; `track` runs `dvc add`
and returns the directory md5 that the `.dvc` pointer pins (`read_pointer`); `push` / `status` wrap `dvc push` /
`dvc status --cloud`. The md5 is what a pipeline passes downstream (a task input), so caching keys on data and
no step has to `dvc pull` the whole set. The filter's "version this output" and the `data/` folder of the
repository (`components/data`) are built on these calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DvcError", "DvcVersion", "run", "read_pointer", "remote_url", "ensure_dvc_repo", "track", "push", "status"]


class DvcError(RuntimeError):
    """A `dvc` command failed; the message holds the command, the folder and what DVC said."""


@dataclass(frozen=True)
class DvcVersion:
    path: str  # tracked path, relative to the repo
    md5: str  # DVC's md5 (directories end in ".dir")
    dvc_file: str
    nfiles: int | None = None
    size: int | None = None


def _dvc_exe() -> list[str]:
    local = Path(sys.executable).with_name("dvc")
    if local.exists():
        return [str(local)]
    found = shutil.which("dvc")
    if found:
        return [found]
    return [sys.executable, "-m", "dvc"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "soraflow")
    env.setdefault("GIT_AUTHOR_EMAIL", "soraflow@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "soraflow")
    env.setdefault("GIT_COMMITTER_EMAIL", "soraflow@localhost")
    return env


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_dvc_exe() + list(args), cwd=repo, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed in {repo} (rc={proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def ensure_dvc_repo(repo_dir: str | Path, remote: str | Path | None = None, remote_name: str = "local") -> Path:
    """`dvc init` (with `--no-scm` when the folder is not a git work tree) if `.dvc/` is missing, and make
    `remote` (default: `<repo>/../<repo name>-dvc-remote`) the default remote. Returns the repo path."""
    repo = Path(repo_dir).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".dvc").is_dir():
        run(repo, "init", "-q", *([] if (repo / ".git").exists() else ["--no-scm"]))
        run(repo, "config", "core.analytics", "false")
    remote = Path(remote) if remote else repo.parent / f"{repo.name}-dvc-remote"
    if not str(remote).startswith(("s3://", "gs://", "http://", "https://")):
        Path(remote).mkdir(parents=True, exist_ok=True)
        remote = Path(remote).resolve()
    have = run(repo, "remote", "list").stdout.split()
    if remote_name in have:
        run(repo, "remote", "modify", remote_name, "url", str(remote))
    else:
        run(repo, "remote", "add", remote_name, str(remote))
    run(repo, "remote", "default", remote_name)
    return repo


def read_pointer(dvc_file: Path) -> dict:
    """{"md5", "path", "nfiles", "size"} of the first output a `.dvc` pointer file names."""
    import yaml

    try:
        out = yaml.safe_load(Path(dvc_file).read_text())["outs"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise DvcError(f"{dvc_file}: not a DVC pointer file (no outs[0]: {exc!r})") from None
    return {k: out.get(k) for k in ("md5", "path", "nfiles", "size")}


def track(repo_dir: str | Path, data_path: str | Path) -> DvcVersion:
    """`dvc add` the dataset path (inside the repo); returns its md5 from the `.dvc` pointer."""
    repo = Path(repo_dir).resolve()
    data = Path(data_path)
    data = (data if data.is_absolute() else repo / data).resolve()
    if not data.exists():
        raise FileNotFoundError(f"dataset path {data} does not exist")
    rel = data.relative_to(repo)
    run(repo, "add", "-q", str(rel))
    dvc_file = data.with_name(data.name + ".dvc")
    ptr = read_pointer(dvc_file)
    return DvcVersion(path=str(rel), md5=str(ptr["md5"]), dvc_file=str(dvc_file.relative_to(repo)),
                      nfiles=ptr.get("nfiles"), size=ptr.get("size"))


def push(repo_dir: str | Path, remote: str | None = None) -> str:
    return run(Path(repo_dir), "push", "-q", *(["-r", remote] if remote else [])).stdout


def status(repo_dir: str | Path, cloud: bool = True) -> dict:
    """`dvc status [--cloud] --json` as a dict; `{}` means clean (workspace = pointers, remote has it all)."""
    out = run(Path(repo_dir), "status", *(["--cloud"] if cloud else []), "--json").stdout.strip()
    return json.loads(out) if out else {}


def remote_url(repo: Path, name: str | None = None) -> str | None:
    """The URL of remote `name` (default: the repository's default remote), or None when there is none."""
    if name is None:
        name = run(repo, "config", "core.remote", check=False).stdout.strip() or None
    if name is None:
        return None
    for line in run(repo, "remote", "list").stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] == name:
            return parts[1].split()[0]  # "URL  (default)"
    return None
