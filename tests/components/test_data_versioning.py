"""`soraflow data`: the curated set as `data/` + `data.dvc` in temporary git+DVC repositories (never this repo)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(shutil.which("git") is None,
                                reason="needs git")

from soraflow.common.video_io import write_video  # noqa: E402
from soraflow.components.data import DataError, dataset  # noqa: E402
from soraflow.components.filter import run_filter  # noqa: E402
from soraflow.common.dvc import ensure_dvc_repo  # noqa: E402
from soraflow.cli.main import main  # noqa: E402
from soraflow.training.data import data_revision, load_table  # noqa: E402

BUCKETS = {"256px": {16: (1.0, 1)}}


def _git(cwd: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def _pan(seed: int, speed: int = 2, n: int = 16, s: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pano = rng.integers(0, 256, (s, s + speed * n + 8, 3)).astype(np.uint8)
    pano = np.repeat(np.repeat(pano[::4, ::4], 4, 0), 4, 1)[:s]  # blocky texture: sharp, moves visibly
    return np.stack([pano[:, speed * i: speed * i + s] for i in range(n)])


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    d = tmp_path_factory.mktemp("ingested")
    rows = []
    for k in range(2):
        p = write_video(d / f"clip{k}.mp4", _pan(k), 24.0)
        rows.append({"path": str(p), "text": f"clip {k}", "num_frames": 16, "height": 64, "width": 64,
                     "aspect_ratio": 1.0, "resolution": 4096, "fps": 24.0})
    out = tmp_path_factory.mktemp("run") / "curated"
    res = run_filter(pd.DataFrame(rows), out, progress=False)
    assert len(res.set_256) == 2, res.full[["path", "reason"]]
    return out


@pytest.fixture()
def repo(tmp_path):
    r = tmp_path / "project"
    r.mkdir()
    _git(r, "init", "-q")
    return r


def test_version_push_clone_pull(curated, repo, tmp_path, capsys):
    remote = tmp_path / "store"
    assert main(["data", "version", "--repo", str(repo), "--from", str(curated), "--remote", str(remote)]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["data_revision"].endswith(".dir") and (repo / "data.dvc").exists()
    # self-contained: the training tables point into data/clips/, relative to the table's folder
    t = load_table(repo / "data" / "set_256px.parquet")
    assert all(Path(p).is_file() and "/data/clips/" in p for p in t["path"])
    assert v["tables"]["set_256px.parquet"]["sha256"] == (
        __import__("hashlib").sha256((repo / "data" / "set_256px.parquet").read_bytes()).hexdigest())
    # the filter's own lineage travels with the data
    stats = json.loads((repo / "data" / "stats.json").read_text())
    assert stats["input"]["table"] == "<DataFrame>" and stats["outputs"]["set_256px"]["md5"]

    # re-versioning the same filter output gives the same revision
    again = dataset.version(repo, curated)
    assert again["data_revision"] == v["data_revision"]

    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "data")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))

    # nothing pushed yet: a clean clone gets a message, not a traceback
    assert main(["data", "pull", "--repo", str(clone)]) == 1
    err = capsys.readouterr().err
    assert v["data_revision"] in err and "soraflow data push" in err and "Traceback" not in err

    assert main(["data", "push", "--repo", str(repo)]) == 0
    assert main(["data", "status", "--repo", str(repo)]) == 0  # workspace and remote agree
    capsys.readouterr()
    assert main(["data", "pull", "--repo", str(clone)]) == 0
    pulled = clone / "data" / "set_256px.parquet"
    # the trainer's data_revision (table bytes + bucket plan) is the same on the pulled copy
    assert data_revision(pulled, BUCKETS) == data_revision(repo / "data" / "set_256px.parquet", BUCKETS)
    assert len(load_table(pulled)) == 2


def test_changed_data_changes_revision(curated, repo, tmp_path):
    v1 = dataset.version(repo, curated, remote=str(tmp_path / "store"))
    edited = tmp_path / "edited"
    shutil.copytree(curated, edited)
    df = pd.read_parquet(edited / "set_256px.parquet").iloc[:1]
    df.to_parquet(edited / "set_256px.parquet", index=False)
    v2 = dataset.version(repo, edited)
    assert v2["data_revision"] != v1["data_revision"]
    assert v2["tables"]["set_256px.parquet"]["sha256"] != v1["tables"]["set_256px.parquet"]["sha256"]
    assert data_revision(repo / "data" / "set_256px.parquet", BUCKETS) != ""


def test_clear_errors(repo, tmp_path):
    with pytest.raises(DataError, match="not a DVC repository"):
        dataset.pull(repo)
    ensure_dvc_repo(repo, tmp_path / "store")
    with pytest.raises(DataError, match="data.dvc does not exist"):
        dataset.pull(repo)
    bad = tmp_path / "not-curated"
    bad.mkdir()
    with pytest.raises(DataError, match="set_256px.parquet is missing"):
        dataset.version(repo, bad)


def test_fetch_revision_needs_no_checkout_and_checks_every_file(curated, repo, tmp_path):
    """A pipeline step that starts from data.dvc's revision gets the very files `data version` recorded,
    from the remote alone; a file that is missing or corrupted there is named."""
    from soraflow.components.data.dataset import fetch_revision

    remote = tmp_path / "remote"
    v = dataset.version(repo, curated, remote=str(remote))
    dataset.push(repo)
    got = fetch_revision(str(remote), v["data_revision"], tmp_path / "pulled")
    assert got["nfiles"] == v["nfiles"]
    assert dataset.file_listing(tmp_path / "pulled") == dataset.file_listing(repo / "data")
    assert len(load_table(tmp_path / "pulled" / "set_256px.parquet")) == 2  # clips/ paths resolve
    with pytest.raises(DataError, match="is not on the remote"):
        fetch_revision(str(remote), "0" * 32, tmp_path / "none")
    with pytest.raises(DataError, match="not a DVC directory md5"):
        fetch_revision(str(remote), "main", tmp_path / "none")
    # corrupt one stored object: the fetch stops naming the file, and leaves no half-written folder
    victim = next(e for e in dataset.file_listing(repo / "data") if e["relpath"].endswith("set_256px.parquet"))
    stored = remote / "files" / "md5" / victim["md5"][:2] / victim["md5"][2:]
    stored.chmod(0o644)
    stored.write_bytes(b"not the table")
    with pytest.raises(DataError, match="set_256px.parquet .* does not match its md5"):
        fetch_revision(str(remote), v["data_revision"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
