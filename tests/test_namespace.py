"""One installed namespace: the wheel adds the import name `soraflow` and nothing else, and every module of the
checkout's package folders imports from the installed copy as `soraflow.<folder>...`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_INSTALLED = {"tests", "benchmarks", "scripts", "infra", "docs", "docker", "soraflow"}
FOLDERS = sorted(p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
                 and p.name not in NOT_INSTALLED and not p.name.startswith("."))

pytestmark = pytest.mark.slow


def _source_files() -> list[Path]:
    return sorted(p.relative_to(REPO) for folder in FOLDERS + ["soraflow"] for p in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (a build in place would leave build/ and egg-info here),
    offline: this interpreter's setuptools, no isolated build environment to download."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in FOLDERS + ["soraflow"]:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(src)], check=True, timeout=600)
    (whl,) = out.glob("soraflow-*.whl")
    return whl


def test_the_wheel_adds_only_soraflow(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        assert {n.split("/")[0] for n in names} == {"soraflow", dist_info}
        record = [line.split(",")[0] for line in z.read(f"{dist_info}/RECORD").decode().splitlines() if line]
        assert {r.split("/")[0] for r in record} == {"soraflow", dist_info}
        if f"{dist_info}/top_level.txt" in names:
            assert z.read(f"{dist_info}/top_level.txt").decode().split() == ["soraflow"]
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert re.search(r"^soraflow = soraflow\.cli\.main:main$", entry_points, re.M)
    # every source file of the checkout's package folders is in it, under soraflow/
    installed = {r[len("soraflow/"):] for r in record if r.startswith("soraflow/")}
    missing = [str(p) for p in _source_files() if p.parts[0] != "soraflow" and p.as_posix() not in installed]
    assert not missing, f"not in the wheel: {missing}"
    # and the data files the code reads at run time
    for data in ("components/eval/mini_suite.json", "components/eval/VBENCH_LICENSE", "monitoring/prometheus.yml",
                 "monitoring/rules/soraflow.rules.yml", "monitoring/dashboards/training.json"):
        assert data in installed, data


_PROBE = r"""
import importlib, importlib.util, json, pkgutil, sys
import soraflow
names = [m.name for m in pkgutil.walk_packages(soraflow.__path__, "soraflow.") if not m.name.endswith("__main__")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps({"file": soraflow.__file__, "path": list(soraflow.__path__), "modules": len(names),
                  "failed": failed,
                  "old_names": {t: importlib.util.find_spec(t).origin for t in sys.argv[1:] if importlib.util.find_spec(t)}}))
"""


def test_the_installed_wheel_imports_as_soraflow_only(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    vpy = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, timeout=600)
    # the dependencies: this environment's site-packages, as plain path entries (the .pth files in them, such as
    # an editable install of a checkout, are not run), behind the fresh venv's own site-packages
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "zz_soraflow_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(vpy), "-c", _PROBE, *FOLDERS], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(venv)
    assert [Path(p).parent for p in got["path"]] == [Path(site)]  # the installed copy only, no checkout
    assert got["failed"] == {}
    # `import models` (or another folder's name) finds nothing the wheel installed (python-hcl2, a test
    # dependency, ships a top-level `cli` of its own: the very clash one namespace avoids)
    assert not [t for t, origin in got["old_names"].items() if origin and Path(origin).is_relative_to(venv)]
    n_modules = len([p for p in _source_files() if p.parts[0] != "soraflow" and p.name != "__main__.py"])
    assert got["modules"] == n_modules


def test_no_module_imports_an_old_top_level_name():
    """In a checkout the folders are also importable by their bare names (they sit on PYTHONPATH); code that
    did so would load a second copy of a module. Nothing of the repository may."""
    pattern = re.compile(rf"^\s*(?:from\s+(?:{'|'.join(FOLDERS)})(?:\.\w+)*\s+import\b|import\s+(?:{'|'.join(FOLDERS)})\b)",
                         re.M)
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = [f for f in tracked if (REPO / f).is_file() and pattern.search((REPO / f).read_text(encoding="utf-8"))]
    assert offenders == []
