"""DVC versioning of the curated dataset (design §3; anchors pitfall 20).

`ensure_dvc_repo` runs `dvc init` where needed and sets a default local remote; `track` runs `dvc add` on the
dataset folder and returns the directory md5 that the `.dvc` pointer pins; `push` / `status` wrap
`dvc push` / `dvc status --cloud`. `file_md5` gives the md5 DVC 3 records for a single file (plain md5 of
its bytes), so a step can report the hash of what it read without tracking it. Every call runs the `dvc`
CLI with `DVC_NO_ANALYTICS=1`. The md5 is what a pipeline passes downstream (task input), so caching keys
on data and no component has to `dvc pull` the whole set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from common.digests import file_md5  # DVC's md5 of a file; also re-exported here

__all__ = ["DvcError", "DvcVersion", "dvc_available", "ensure_dvc_repo", "track", "push", "status", "file_md5",
           "version_dataset"]


class DvcError(RuntimeError):
    pass


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


def dvc_available() -> bool:
    try:
        import dvc  # noqa: F401
    except ImportError:
        return shutil.which("dvc") is not None
    return True


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "soraflow")
    env.setdefault("GIT_AUTHOR_EMAIL", "soraflow@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "soraflow")
    env.setdefault("GIT_COMMITTER_EMAIL", "soraflow@localhost")
    return env


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
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
        _dvc(repo, "init", "-q", *([] if (repo / ".git").exists() else ["--no-scm"]))
        _dvc(repo, "config", "core.analytics", "false")
    remote = Path(remote) if remote else repo.parent / f"{repo.name}-dvc-remote"
    if not str(remote).startswith(("s3://", "gs://", "http://", "https://")):
        Path(remote).mkdir(parents=True, exist_ok=True)
        remote = Path(remote).resolve()
    have = _dvc(repo, "remote", "list").stdout.split()
    if remote_name in have:
        _dvc(repo, "remote", "modify", remote_name, "url", str(remote))
    else:
        _dvc(repo, "remote", "add", remote_name, str(remote))
    _dvc(repo, "remote", "default", remote_name)
    return repo


def _read_pointer(dvc_file: Path) -> dict:
    import yaml  # dvc depends on ruamel; PyYAML may be absent -> tiny parser fallback below

    return yaml.safe_load(dvc_file.read_text())


def _pointer(dvc_file: Path) -> dict:
    try:
        data = _read_pointer(dvc_file)
        out = data["outs"][0]
        return {k: out.get(k) for k in ("md5", "path", "nfiles", "size")}
    except ImportError:
        out: dict = {}
        for line in dvc_file.read_text().splitlines():
            line = line.strip().lstrip("- ")
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                if k in ("md5", "path", "nfiles", "size") and k not in out:
                    out[k] = int(v) if k in ("nfiles", "size") else v
        return out


def track(repo_dir: str | Path, data_path: str | Path) -> DvcVersion:
    """`dvc add` the dataset path (inside the repo); returns its md5 from the `.dvc` pointer."""
    repo = Path(repo_dir).resolve()
    data = Path(data_path)
    data = (data if data.is_absolute() else repo / data).resolve()
    if not data.exists():
        raise FileNotFoundError(f"dataset path {data} does not exist")
    rel = data.relative_to(repo)
    _dvc(repo, "add", "-q", str(rel))
    dvc_file = data.with_name(data.name + ".dvc")
    ptr = _pointer(dvc_file)
    return DvcVersion(path=str(rel), md5=str(ptr["md5"]), dvc_file=str(dvc_file.relative_to(repo)),
                      nfiles=ptr.get("nfiles"), size=ptr.get("size"))


def push(repo_dir: str | Path, remote: str | None = None) -> str:
    return _dvc(Path(repo_dir), "push", "-q", *(["-r", remote] if remote else [])).stdout


def status(repo_dir: str | Path, cloud: bool = True) -> dict:
    """`dvc status [--cloud] --json` as a dict; `{}` means clean (workspace = pointers, remote has it all)."""
    out = _dvc(Path(repo_dir), "status", *(["--cloud"] if cloud else []), "--json").stdout.strip()
    return json.loads(out) if out else {}


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
        result["input_md5"] = _pointer(dvc_ptr)["md5"] if dvc_ptr.exists() else (file_md5(p) if p.is_file() else None)
    return result
