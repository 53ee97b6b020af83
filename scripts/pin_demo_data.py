"""Curate the demo dataset from scratch and print its DVC revision; with --pin, make it the pinned one.

    python scripts/pin_demo_data.py --root /tmp/demo-data          # curate into ROOT, print the revision
    python scripts/pin_demo_data.py --root /tmp/demo-data --pin    # ... and rewrite data.dvc + the fixture

The recipe is the one `make demo` runs (the sample videos of DEMO_SAMPLE_SET -> ingest -> filter with
DEMO_FILTER_SETTINGS -> `data version`), done here in a fresh git repository under ROOT. Re-pin only after a deliberate change to
what the demo curates; tests/components/test_demo_dataset.py checks that the pin is reproduced.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "demo_data.dir.json"


def curate(root: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from soraflow.components.data import version
    from soraflow.components.filter import run_filter
    from soraflow.components.ingest import ingest
    from soraflow.components.sample_data.generate import DEMO_FILTER_SETTINGS, DEMO_SAMPLE_SET, make_sample_videos

    (root / "repo").mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root / "repo", check=True)
    manifest = make_sample_videos(root / "raw", **DEMO_SAMPLE_SET)
    ingest(manifest, root / "ingested", workers=2, progress=False)
    run_filter(root / "ingested" / "clips.parquet", root / "curated", progress=False, **DEMO_FILTER_SETTINGS)
    return version(root / "repo", root / "curated")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path, help="an empty folder to curate into")
    ap.add_argument("--pin", action="store_true", help="write data.dvc and the listing fixture from the result")
    args = ap.parse_args(argv)
    result = curate(args.root.resolve())
    if args.pin:
        md5 = result["data_revision"]
        repo = args.root.resolve() / "repo"
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:], FIXTURE)
        shutil.copyfile(repo / "data.dvc", REPO / "data.dvc")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
