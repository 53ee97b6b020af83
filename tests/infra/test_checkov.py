"""checkov over infra/: no failed check that is not suppressed in place with a written reason.

checkov pins old packaging/networkx and so is not installed in the project's environment:
`make test-deps` puts it in `.venv-checkov/`. It runs when $CHECKOV names it, `checkov` is on PATH or
`.venv-checkov/bin/checkov` exists, and is skipped otherwise."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from infra_helpers import REPO

INFRA = REPO / "infra"


def _checkov():
    local = REPO / ".venv-checkov" / "bin" / "checkov"
    exe = os.environ.get("CHECKOV") or shutil.which("checkov") or (str(local) if local.exists() else None)
    if not exe:
        pytest.skip("checkov not installed: make test-deps (or set CHECKOV=/path/to/checkov)")
    return exe


@pytest.mark.slow
def test_checkov_has_no_unsuppressed_failures():
    r = subprocess.run(
        [_checkov(), "--directory", str(INFRA), "--framework", "terraform", "kubernetes",
         "--output", "json", "--quiet", "--skip-download"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for rep in reports for c in rep.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert any(rep.get("check_type") == "terraform" for rep in reports), "checkov scanned no terraform"


def test_every_suppression_gives_a_reason():
    for path in list(INFRA.rglob("*.tf")) + list(INFRA.rglob("*.yaml")):
        for line in path.read_text().splitlines():
            m = re.search(r"checkov:skip=(CKV\w*_\d+)(.*)", line)
            if m:
                reason = m.group(2).lstrip(":").strip()
                assert len(reason) >= 20, f"{path}: {m.group(1)} suppressed without a written reason"
