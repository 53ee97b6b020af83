"""Every command in the README's bash blocks runs as written, in a folder laid out as `make demo` leaves one.

Each command is taken from README.md (continuation lines joined, comments dropped, `[...]` optional parts
removed) and must appear in EXPECTED below, which says what running it has to produce; a new README example
without an entry fails `test_every_readme_command_is_covered`. Commands are run with the installed `soraflow`
script, in order, in one temporary git repository (the Curate block's output stands in for `demo-out/curated`,
which `make demo` links to the filter's output). What cannot run here says so in its entry: a command that
needs release weights or a KFP server must fail with one clear line naming what is missing (and write
nothing); a template with placeholders (`...`, `BUCKET`) must parse; the whole-DAG commands are the ones
tests/pipelines/test_local_run.py runs through the same function.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SORAFLOW = Path(sys.executable).with_name("soraflow")

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            line = shlex.join(words)
            line = re.sub(r"\s*'?\[[^\]]*\]'?", "", line)  # optional parts of a synopsis
            commands.append(" ".join(line.split()))
    return commands


# command (as normalised by readme_commands) -> what running it must give:
#   ("run", [files it must create])      run as written, exit 0
#   ("fails", "message")                 needs what this machine lacks: exit 1, this in the one error line
#   ("parses", None)                     a template (placeholders): the CLI must accept its flags
#   ("elsewhere", "test")                the whole DAG: run through the same function by that test
#   ("shell", None)                      not a soraflow command (make, git): the README's own workflow
EXPECTED = {
    "make demo": ("shell", None),
    "make test": ("shell", None),
    "soraflow run --out-dir run1": ("elsewhere", "tests/pipelines/test_local_run.py"),
    "soraflow compile": ("run", ["pipelines/compiled/soraflow.yaml"]),
    "soraflow compile --release --cpu-image REPO/cpu@sha256:... --gpu-image REPO/gpu@sha256:... --out p.yaml":
        ("parses", None),
    "soraflow submit --host https://KFP --release --cpu-image ... --gpu-image ... --recipe dit_stage1=stage1-256px-h200x8 "
    "--param raw_manifest=gs://BUCKET/raw/manifest.csv": ("parses", None),
    "soraflow run --out-dir rerun --from-revision pinned": ("elsewhere", "tests/pipelines/test_local_run.py"),
    "soraflow compile --start revision": ("run", ["pipelines/compiled/soraflow-retrain.yaml"]),
    "soraflow submit --host https://KFP --release --cpu-image ... --gpu-image ... --from-revision pinned":
        ("parses", None),
    "soraflow sample-data --out-dir raw": ("run", ["raw/manifest.csv"]),
    "soraflow ingest raw/manifest.csv --out-dir ingested": ("run", ["ingested/clips.parquet"]),
    "soraflow filter --table ingested/clips.parquet --out-dir curated":
        ("run", ["curated/set_256px.parquet", "curated/set_768px.parquet"]),
    "soraflow data version --from curated": ("run", ["data.dvc", "data/set_256px.parquet"]),
    "git add data.dvc .gitignore '&&' git commit -m 'data: <revision>'": ("shell", None),
    "soraflow data push": ("run", []),
    "soraflow data pull": ("run", ["data/set_256px.parquet"]),
    "soraflow data status": ("run", []),
    "soraflow generate --weights-dir ckpts --prompt 'a red kite over a beach' --num-frames 129 --resolution 256px "
    "--aspect-ratio 16:9 --out kite.mp4": ("fails", "DiT weights not found: ckpts/Open_Sora_v2.safetensors"),
    "soraflow generate --weights-dir ckpts --prompt ... --cond-type i2v_head --ref first_frame.png":
        ("fails", "reference image first_frame.png: no such file"),
    "soraflow generate --model opensora2-hc --weights-dir ckpts --prompt ... --num-frames 128 --resolution 768px":
        ("fails", "weights not found: ckpts/"),
    "soraflow generate --model tiny --random-init --prompt ... --num-frames 9 --height 64 --width 64 --steps 4":
        ("run", ["samples"]),
    "soraflow train --stage dit_stage1 --recipe tiny-cpu-stage1 --data-table demo-out/curated/set_256px.parquet "
    "--run-dir runs/s1": ("run", ["runs/s1/model.safetensors", "runs/s1/config.json"]),
    "soraflow train --stage dit_stage2 --recipe tiny-cpu-stage2 --data-table demo-out/curated/set_256px.parquet "
    "--init-from runs/s1/model.safetensors --run-dir runs/s2": ("run", ["runs/s2/model.safetensors"]),
    "soraflow train --recipe tiny-cpu-stage1 --nproc 2 --run-dir runs/s1-2proc --override "
    "'data.table=\"demo-out/curated/set_256px.parquet\"'": ("run", ["runs/s1-2proc/model.safetensors"]),
    "soraflow train --recipe stage1-256px-h200x8 --nnodes 4 --nproc 8 --gpus-per-node 8 --scheduler kubernetes-dryrun":
        ("run", []),
    "soraflow eval --model stage3=tiny --model hc=tiny-hc:frames=8 --random-init --out-dir ev --max-prompts 2 "
    "--num-frames 9 --height 64 --width 64 --steps 2 --reference-clips demo-out/curated":
        ("run", ["ev/report.html", "ev/metrics.json"]),
    "soraflow eval --model stage3=opensora2:dit=s3.safetensors --model hc=opensora2-hc:frames=128 --weights-dir ckpts "
    "--out-dir ev-release --suite VBench_full_info.json --seeds 0,1,2,3,4 --vbench-python /opt/vbench/bin/python "
    "--vbench-weights /mnt/vbench": ("fails", "prompt suite 'VBench_full_info.json': not 'mini' and no such file"),
}


def test_every_readme_command_is_covered():
    commands = readme_commands()
    missing = [c for c in commands if c not in EXPECTED]
    stale = [c for c in EXPECTED if c not in commands]
    assert not missing, f"README commands with no entry in EXPECTED: {missing}"
    assert not stale, f"EXPECTED entries the README no longer has: {stale}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A git repository to run the examples in, with `demo-out/curated` pointing where the Curate block writes."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    (work / "demo-out").mkdir()
    (work / "demo-out" / "curated").symlink_to(work / "curated", target_is_directory=True)
    return work


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "soraflow"
    env = {**os.environ, "PATH": f"{SORAFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(cwd.parent), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run([str(SORAFLOW), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _parses(command: str) -> None:
    from soraflow.cli.main import build_parser

    argv = shlex.split(command)[1:]
    build_parser().parse_args(argv)  # argparse exits (SystemExit 2) on an unknown flag or a missing value


@pytest.mark.parametrize("command", [c for c in EXPECTED if EXPECTED[c][0] != "shell"])
def test_readme_command(command, workdir):
    kind, what = EXPECTED[command]
    if kind == "elsewhere":
        assert (REPO / what).is_file()
        _parses(command)
        return
    if kind == "parses":
        _parses(command)
        return
    before = {p for p in workdir.rglob("*")}
    proc = _run(command, workdir)
    if kind == "fails":
        err = proc.stderr.strip()
        assert proc.returncode == 1, (proc.returncode, err[-2000:])
        assert "Traceback" not in err and what in err, err[-2000:]
        assert {p for p in workdir.rglob("*")} == before, "a failed command left files behind"
        return
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    for rel in what:
        assert (workdir / rel).exists(), f"{command}: {rel} was not written"
    if "kubernetes-dryrun" in command:  # the job as YAML documents kubectl can take
        import yaml

        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        assert any(d.get("kind") == "Job" and d.get("apiVersion", "").startswith("batch.volcano.sh") for d in docs)
    if command == "soraflow data status":
        assert json.loads(proc.stdout)["clean"] is True
