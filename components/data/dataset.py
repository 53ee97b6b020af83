"""The curated dataset as a DVC-versioned folder of the project repository (`data.dvc`;
`docs/curation.md`, "Reproducible dataset revisions").

Layout, in the repository root:

    data/                   tracked by DVC as one directory (git ignores it; `data.dvc` pins it)
      set_256px.parquet     training tables; `path` is relative to the table's folder ("clips/x.mp4"),
      set_768px.parquet     which `soraflow.common.clip_table.load_table` resolves, so a pulled copy works anywhere
      needs_caption.parquet
      full.parquet          every clip with scores and rejection reasons (paths as the filter saw them)
      stats.json, validation/
      clips/*.mp4           the clips the tables above reference (hard links to the filter's input if possible)
    data.dvc                the pointer: the md5 of `data/` is the dataset's revision (commit it with git)
    .dvc/config             remotes; the default `local` is a folder next to the repository

`version(repo, curated_dir)` builds `data/` from a filter output folder and runs `dvc add`; `push`, `pull`,
`status` wrap the DVC commands with messages that say what to do when something is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from soraflow.common.atomic import write_text_atomic
from soraflow.common.digests import file_digests, table_record
from soraflow.common.clip_table import FULL_FILE, NEEDS_CAPTION_FILE, SET_FILES, read_table, write_table
from soraflow.common import dvc
from soraflow.common.dvc import DvcError, ensure_dvc_repo, read_pointer, track

__all__ = ["DataError", "DATA_DIR", "POINTER", "TABLES", "version", "push", "pull", "status", "revision",
           "file_listing", "pinned_listing", "diff_listings", "fetch_revision"]

DATA_DIR = "data"
POINTER = "data.dvc"
TABLES = (*SET_FILES.values(), NEEDS_CAPTION_FILE)  # paths rewritten to clips/
COPIED = ("stats.json", "validation")  # copied as they are (full.parquet is rewritten like the tables)


class DataError(RuntimeError):
    """A data command cannot proceed; the message says why and what to run."""


def _repo(repo: str | Path) -> Path:
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir():
        raise DataError(f"{repo} is not a DVC repository (no .dvc/): run `soraflow data version` there first, "
                        f"or `dvc init`")
    return repo


def revision(repo: str | Path) -> dict[str, Any] | None:
    """What `data.dvc` pins: {"data_revision": md5, "nfiles", "size"}, or None when nothing is versioned."""
    ptr = Path(repo) / POINTER
    if not ptr.exists():
        return None
    out = read_pointer(ptr)
    return {"data_revision": out.get("md5"), "nfiles": out.get("nfiles"), "size": out.get("size")}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _portable_sources(values: list[str]) -> list[str]:
    """Source video paths relative to the folder they share (`raw/a.mp4` -> `a.mp4`), so the tables hold no
    path of the machine that curated them; URLs stay as they are."""
    local = [v for v in values if v and "://" not in v]
    if not local:
        return values
    root = os.path.commonpath([os.path.dirname(v) for v in local])
    return [os.path.relpath(v, root) if v and "://" not in v else v for v in values]


def _stage(curated: Path, staging: Path) -> None:
    """Fill `staging` with a self-contained, machine-independent copy of the filter output `curated`.

    Clips referenced by the training tables are linked into `clips/` and every table's `path` becomes
    `clips/<name>`; in `full.parquet` a clip that no training table uses keeps only its file name; `source`
    and `dup_of` lose the curating machine's folders too. The same curated content therefore gives the same
    bytes, and the same DVC md5, wherever it was made."""
    clips = staging / "clips"
    clips.mkdir(parents=True)
    placed: dict[str, Path] = {}  # file name in clips/ -> source, so two sources never share a name
    frames = {}
    for name in TABLES:
        src = curated / name
        if not src.exists():
            raise DataError(f"{curated} is not a filter output: {name} is missing")
        df = read_table(src)
        if "path" not in df.columns:
            raise DataError(f"{src}: no `path` column")
        for row, p in enumerate(df["path"].astype(str)):
            clip = Path(p) if Path(p).is_absolute() else (curated / p)
            if not clip.is_file():
                raise DataError(f"{src} row {row}: clip {clip} does not exist")
            prev = placed.get(clip.name)
            if prev is None:
                _link_or_copy(clip, clips / clip.name)
                placed[clip.name] = clip.resolve()
            elif prev != clip.resolve():
                raise DataError(f"{src} row {row}: two clips share the file name {clip.name} ({prev}, {clip})")
        frames[name] = df
    full = curated / FULL_FILE
    if full.exists():
        frames[FULL_FILE] = read_table(full)
    # one source root for every table, so a source is spelled the same in all of them
    all_sources = sorted({str(v) for df in frames.values() if "source" in df.columns for v in df["source"]})
    portable = dict(zip(all_sources, _portable_sources(all_sources)))

    def clip_ref(p) -> object:
        if not isinstance(p, str) or not p:
            return p
        name = Path(p).name
        return f"clips/{name}" if name in placed else name

    # free text (rejection reasons, scorer notes) names files too: drop the curating machine's folders there
    prefixes = {os.path.dirname(str(p)) for df in frames.values() for p in df["path"] if os.path.isabs(str(p))}
    local = [v for v in all_sources if v and "://" not in v]
    if local:
        prefixes.add(os.path.commonpath([os.path.dirname(v) for v in local]))
    prefixes = sorted((p.rstrip("/") + "/" for p in prefixes if p not in ("", "/")), key=len, reverse=True)

    def strip_folders(text):
        if isinstance(text, str):
            for prefix in prefixes:
                text = text.replace(prefix, "")
        return text

    for name, df in frames.items():
        df = df.copy()
        for col in df.columns:
            if (df[col].dtype == object or pd.api.types.is_string_dtype(df[col])) and col not in ("path", "dup_of", "source"):
                df[col] = df[col].map(strip_folders)
        df["path"] = pd.Series([clip_ref(p) for p in df["path"].astype(str)], index=df.index, dtype=object)
        if "dup_of" in df.columns:
            df["dup_of"] = pd.Series([clip_ref(p) for p in df["dup_of"]], index=df.index, dtype=object)
        if "source" in df.columns:
            df["source"] = pd.Series([portable.get(str(v), v) for v in df["source"]], index=df.index, dtype=object)
        write_table(df, staging / name)
    stats_path = curated / "stats.json"
    if stats_path.exists():
        # the filter's digests are of tables that hold the curating machine's paths; here they describe the
        # portable tables in data/ (what the trainer's data_revision hashes), and the input is named only
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
        stats["input"] = {"table": Path(str(stats.get("input", {}).get("table", ""))).name}
        stats["outputs"] = {Path(n).stem: table_record(staging / n, relative_to=staging)
                            for n in (*TABLES, FULL_FILE) if (staging / n).exists()}
        write_text_atomic(staging / "stats.json", json.dumps(stats, indent=2, default=str))
    for name in COPIED:
        src = curated / name
        if name == "stats.json":
            continue  # rewritten above
        if src.is_dir():
            shutil.copytree(src, staging / name)
        elif src.exists():
            shutil.copy2(src, staging / name)


def version(repo: str | Path, curated_dir: str | Path | None = None, *, remote: str | None = None) -> dict:
    """Make `<repo>/data` the curated dataset (from `curated_dir` when given) and `dvc add` it.

    `dvc init` runs when the repo has no `.dvc/`; `remote` (a folder, s3:// or gs:// URL) becomes the default
    remote, else the one in `.dvc/config` stays (or a local folder next to the repo is set up). Returns
    {"data_revision", "pointer", "tables": {name: {md5, sha256}}, "input": the curated folder's lineage}.
    """
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir() or remote:
        ensure_dvc_repo(repo, remote)
    elif not dvc.run(repo, "remote", "list").stdout.strip():
        ensure_dvc_repo(repo, None)
    data = repo / DATA_DIR
    if curated_dir is not None:
        curated = Path(curated_dir).resolve()
        if not curated.is_dir():
            raise DataError(f"curated folder {curated} does not exist (run `soraflow filter --out-dir ...`)")
        if curated == data:
            raise DataError(f"{curated} is already the data folder; run `soraflow data version` without --from")
        # build next to data/, then swap, so a failure leaves the previous data/ as it was
        staging = Path(tempfile.mkdtemp(prefix=".data.tmp-", dir=repo))
        try:
            _stage(curated, staging / DATA_DIR)
            old = repo / f".data.old-{os.getpid()}"
            if data.exists():
                os.replace(data, old)
            os.replace(staging / DATA_DIR, data)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not data.is_dir():
        raise DataError(f"{data} does not exist: give the filter output with --from")
    v = track(repo, data)
    tables = {}
    for name in TABLES:
        if (data / name).exists():
            md5, sha256 = file_digests(data / name)
            tables[name] = {"md5": md5, "sha256": sha256}
    return {"data_revision": v.md5, "pointer": str(repo / POINTER), "nfiles": v.nfiles, "size": v.size,
            "tables": tables,
            "next": f"git add {POINTER} .gitignore && git commit -m 'data: {v.md5}'; soraflow data push"}


def push(repo: str | Path, remote: str | None = None) -> dict:
    repo = _repo(repo)
    rev = revision(repo)
    if rev is None:
        raise DataError(f"{repo / POINTER} does not exist: nothing is versioned yet (soraflow data version)")
    url = dvc.remote_url(repo, remote)
    if url is None:
        raise DataError(f"{repo}: no DVC remote configured (`dvc remote add -d NAME URL`, see README)")
    try:
        dvc.run(repo, "push", "-q", *(["-r", remote] if remote else []))
    except DvcError as exc:
        raise DataError(f"pushing data revision {rev['data_revision']} to {url} failed: {exc}") from None
    return {**rev, "remote": url}


def pull(repo: str | Path, remote: str | None = None) -> dict:
    """`dvc pull` of `data/`; a clean clone whose remote lacks the revision gets a DataError saying so."""
    repo = _repo(repo)
    rev = revision(repo)
    if rev is None:
        raise DataError(f"{repo / POINTER} does not exist: this checkout pins no dataset revision "
                        f"(soraflow data version creates it)")
    url = dvc.remote_url(repo, remote)
    if url is None:
        raise DataError(f"{repo}: no DVC remote configured, so data revision {rev['data_revision']} cannot be "
                        f"pulled (`dvc remote add -d NAME URL`, see README)")
    proc = dvc.run(repo, "pull", "-q", *(["-r", remote] if remote else []), POINTER, check=False)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(f"data revision {rev['data_revision']} is not on the remote {url} (or it cannot be "
                        f"read): push it from the machine that versioned it (`soraflow data push`), or point the "
                        f"default remote at a copy (`dvc remote modify`). dvc said: {said[-1] if said else '?'}")
    return {**rev, "remote": url, "path": str(repo / DATA_DIR)}


def file_listing(folder: str | Path) -> list[dict]:
    """What DVC records for a folder: [{"md5", "relpath"}] of every file, sorted by relpath (the bytes of
    DVC's `.dir` object are this list as JSON, and the folder's md5 is the md5 of those bytes)."""
    from soraflow.common.digests import file_md5

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()} for p in files]


def pinned_listing(repo: str | Path) -> list[dict] | None:
    """The file list of the revision `data.dvc` pins, from the local DVC cache (None when not cached)."""
    rev = revision(repo)
    if rev is None or not str(rev["data_revision"]).endswith(".dir"):
        return None
    md5 = str(rev["data_revision"])
    obj = Path(repo) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return json.loads(obj.read_text(encoding="utf-8")) if obj.is_file() else None


def diff_listings(pinned: list[dict], current: list[dict]) -> dict[str, list[str]]:
    """Which files were added, removed or changed between two listings (`file_listing` form)."""
    a = {e["relpath"]: e["md5"] for e in pinned}
    b = {e["relpath"]: e["md5"] for e in current}
    return {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)),
            "modified": sorted(k for k in set(a) & set(b) if a[k] != b[k])}


def fetch_revision(remote_url: str, revision: str, dest: str | Path) -> dict:
    """Materialise the dataset `revision` (a DVC directory md5, as `data.dvc` pins it) from a DVC remote into
    `dest`, without a git checkout or DVC itself: the remote is content-addressed (`files/md5/<ab>/<rest>`), the
    revision's `.dir` object lists every file with its md5, and each file is checked against it.

    For pipeline steps that start from a pinned dataset (retraining when `data.dvc` changes). `remote_url` is a
    local folder or an fsspec URL (gs://, s3:// with the matching fsspec package). `dest` is written to a
    temporary sibling and renamed, so it is either complete or absent. Raises DataError naming what is missing."""
    import fsspec

    from soraflow.common.digests import file_md5

    rev = revision if revision.endswith(".dir") else f"{revision}.dir"
    if len(rev) != 36 or any(c not in "0123456789abcdef" for c in rev[:32]):
        raise DataError(f"data revision {revision!r} is not a DVC directory md5 (32 hex digits, as in data.dvc)")
    fs, root = fsspec.core.url_to_fs(str(remote_url))

    def obj(md5: str) -> str:
        return f"{root.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"

    if not fs.exists(obj(rev)):
        raise DataError(f"data revision {rev} is not on the remote {remote_url} (push it with `soraflow data push` "
                        f"from the machine that versioned it)")
    listing = json.loads(fs.cat_file(obj(rev)))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for entry in listing:
            target = staging / entry["relpath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not fs.exists(obj(entry["md5"])):
                raise DataError(f"data revision {rev}: {entry['relpath']} (md5 {entry['md5']}) is missing on {remote_url}")
            fs.get_file(obj(entry["md5"]), str(target))
            if file_md5(target) != entry["md5"]:
                raise DataError(f"data revision {rev}: {entry['relpath']} from {remote_url} does not match its md5")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"data_revision": rev, "nfiles": len(listing), "path": str(dest), "remote": str(remote_url)}


def status(repo: str | Path, remote: str | None = None) -> dict:
    """{"workspace": dvc status, "remote": dvc status --cloud (None without a remote), "clean": bool}."""
    import json

    repo = _repo(repo)
    rev = revision(repo)
    if rev is None:
        return {"data_revision": None, "workspace": {}, "remote": None, "clean": False,
                "note": f"{POINTER} does not exist: nothing versioned yet"}
    local = json.loads(dvc.run(repo, "status", "--json").stdout.strip() or "{}")
    url = dvc.remote_url(repo, remote)
    cloud = None
    if url is not None:
        proc = dvc.run(repo, "status", "--cloud", "--json", *(["-r", remote] if remote else []), check=False)
        cloud = json.loads(proc.stdout.strip() or "{}") if proc.returncode == 0 else {"error": proc.stderr.strip()}
    out = {**rev, "remote_url": url, "workspace": local, "remote": cloud, "clean": not local and not cloud}
    if local and (Path(repo) / DATA_DIR).is_dir():  # say which files differ, when the pinned list is cached
        pinned = pinned_listing(repo)
        if pinned is not None:
            out["changed"] = diff_listings(pinned, file_listing(Path(repo) / DATA_DIR))
    return out
