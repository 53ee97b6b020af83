"""The committed `data.dvc` pins the demo dataset, and curation reproduces it with no system video tool.

The generated sample videos -> ingest -> filter -> `data version` run in a child process whose PATH holds git
and nothing else (no ffmpeg/ffprobe), in a temporary git repository. The result must be byte-identical to
what the repository pins: per file against `tests/fixtures/demo_data.dir.json` (DVC's `.dir` listing of the
pinned revision, so a failure names the files that differ), and as a whole against `data.dvc`'s md5.
After a deliberate change to the dataset (new sample cases, other thresholds), re-pin with
`python scripts/pin_demo_data.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from soraflow.common.digests import file_md5
from soraflow.components.data.dataset import diff_listings, file_listing

REPO = Path(__file__).resolve().parents[2]
POINTER = REPO / "data.dvc"
LISTING = REPO / "tests" / "fixtures" / "demo_data.dir.json"

PIN_SCRIPT = REPO / "scripts" / "pin_demo_data.py"


def _pinned_md5() -> str:
    (out,) = yaml.safe_load(POINTER.read_text())["outs"]
    return out["md5"]


def _git_only_path(tmp: Path) -> str:
    """A PATH with git alone: whatever else the machine has installed (ffmpeg included) is out of reach."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    assert git, "git is one of the three things a fresh machine has"
    (bin_dir / "git").symlink_to(git)
    return str(bin_dir)


def _curate(root: Path) -> dict:
    """The pinning script's recipe (the one `make demo` runs), in a child process with git alone on PATH."""
    env = {**os.environ, "PATH": _git_only_path(root), "PYTHONPATH": str(REPO), "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(root)}
    proc = subprocess.run([sys.executable, str(PIN_SCRIPT), "--root", str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-data")
    return root, _curate(root)


def test_pinned_listing_is_the_revision_data_dvc_names():
    """The fixture is DVC's own `.dir` object of the pinned revision: its md5 is that revision."""
    assert LISTING.is_file() and POINTER.is_file()
    (out,) = yaml.safe_load(POINTER.read_text())["outs"]
    assert out["path"] == "data" and out["hash"] == "md5"
    assert file_md5(LISTING) + ".dir" == out["md5"]
    assert len(json.loads(LISTING.read_text())) == out["nfiles"]


def test_curation_without_ffmpeg_reproduces_data_dvc(curated):
    root, result = curated
    assert shutil.which("ffmpeg", path=str(root / "bin")) is None and shutil.which("ffprobe", path=str(root / "bin")) is None
    produced = file_listing(root / "repo" / "data")
    diff = diff_listings(json.loads(LISTING.read_text()), produced)
    assert diff == {"added": [], "removed": [], "modified": []}, (
        f"the curated demo dataset differs from the pinned one: {diff} (re-pin with scripts/pin_demo_data.py "
        f"if the change is intended)")
    assert result["data_revision"] == _pinned_md5()
    # and DVC's own record of the produced folder is byte-identical to the pinned listing
    md5 = result["data_revision"]
    obj = root / "repo" / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert obj.read_bytes() == LISTING.read_bytes()
    # the dataset holds no path of the machine that made it
    for entry in produced:
        p = root / "repo" / "data" / entry["relpath"]
        if p.suffix in (".parquet", ".json", ".md"):
            assert str(root).encode() not in p.read_bytes(), entry["relpath"]


def test_changed_input_changes_revision_and_names_the_files(curated, tmp_path):
    """One caption changed in the raw manifest: a new md5, and the diff names exactly the tables that carry
    captions (and stats.json, which records their digests) -- no clip is re-encoded differently."""
    import pandas as pd

    from soraflow.components.data import version
    from soraflow.components.filter import run_filter
    from soraflow.components.ingest import ingest
    from soraflow.components.sample_data.generate import DEMO_FILTER_SETTINGS

    root, before = curated
    manifest = pd.read_csv(root / "raw" / "manifest.csv", dtype=str, keep_default_na=False)
    i = manifest.index[manifest["name"] == "pan_coffee"][0]
    manifest.loc[i, "text"] = "a cup of tea on a table, camera pans right"
    changed = tmp_path / "manifest.csv"
    manifest.to_csv(changed, index=False)
    ingest(changed, root / "ingested", workers=2, progress=False)  # sources already cut: only the table changes
    run_filter(root / "ingested" / "clips.parquet", tmp_path / "curated", progress=False, **DEMO_FILTER_SETTINGS)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    after = version(repo, tmp_path / "curated")
    assert after["data_revision"] != before["data_revision"]
    diff = diff_listings(json.loads(LISTING.read_text()), file_listing(repo / "data"))
    assert diff["added"] == diff["removed"] == []
    assert diff["modified"] == ["full.parquet", "set_256px.parquet", "set_768px.parquet", "stats.json"]


def test_the_768px_set_is_a_strict_subset_of_the_256px_set(curated):
    """Stricter by the quality thresholds, and every 768px clip meets the demo's 768px size rule."""
    import pandas as pd

    from soraflow.components.sample_data.generate import DEMO_FILTER_SETTINGS

    root, _ = curated
    data = root / "repo" / "data"
    s256, s768 = (pd.read_parquet(data / f"set_{r}.parquet") for r in ("256px", "768px"))
    assert set(s768["path"]) < set(s256["path"])
    assert file_md5(data / "set_768px.parquet") != file_md5(data / "set_256px.parquet")
    rule = DEMO_FILTER_SETTINGS["thresholds_768"]["min_short_side"]
    assert (s768[["height", "width"]].min(axis=1) >= rule).all()
    full = pd.read_parquet(data / "full.parquet").set_index("path")
    dropped = set(s256["path"]) - set(s768["path"])
    assert all(str(full.loc[p, "reason_768"]).strip() for p in dropped)  # each with its reason
