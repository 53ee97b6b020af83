"""GitHub workflows: valid YAML, the triggers the issue asks for, and every command they run
exists (make targets, soraflow sub-commands of the CLI contract, scripts in this repo)."""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from infra_helpers import REPO, TF_ROOT, WORKFLOWS, outputs, tf_module

FILES = sorted(WORKFLOWS.glob("*.yml"))
# The soraflow CLI contract these workflows rely on (pipelines/ is built by the lead).
SORAFLOW_CONTRACT = {
    "compile": {"--start", "--out", "--cpu-image", "--gpu-image", "--gpu-pool", "--release"},
    "submit": {"--host", "--experiment", "--version-name", "--from-revision", "--cpu-image", "--gpu-image",
               "--gpu-pool", "--release"},
}
# Files the lead's contract promises (docker/) are allowed even before they land.
CONTRACT_FILES = {"docker/cpu.Dockerfile", "docker/gpu.Dockerfile", "pipelines/compiled/soraflow.yaml",
                  "pipelines/compiled/soraflow-retrain.yaml"}


def load(path):
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def run_lines(doc):
    for job in doc["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                # Join shell continuation lines so a command's flags are seen together.
                for line in step["run"].replace("\\\n", " ").splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield line


def wf(name):
    return load(WORKFLOWS / name)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workflow_structure(path):
    doc = load(path)
    assert doc["name"] and doc["on"] and doc["jobs"]
    assert "permissions" in doc, "workflows declare their token permissions"
    for name, job in doc["jobs"].items():
        assert "runs-on" in job and job["steps"], name
        assert "timeout-minutes" in job, f"{path.name}:{name} has no timeout"
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@v\d+", step["uses"]), f"{step['uses']} is not pinned to a major version"


def test_ci_runs_make_test_on_every_change():
    doc = wf("ci.yml")
    assert set(doc["on"]) == {"push", "pull_request"}
    assert doc["on"]["push"] is None, "every branch, every path"
    assert any(line.startswith("make test") for line in run_lines(doc))
    assert any("fmt -check" in line for line in run_lines(doc))
    assert any(line.startswith("checkov ") for line in run_lines(doc))


def test_images_build_on_main_tagged_by_commit_and_recorded_by_digest():
    doc = wf("images.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["permissions"]["id-token"] == "write"
    job = doc["jobs"]["build"]
    assert job["strategy"]["matrix"]["image"] == ["cpu", "gpu"]
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "docker/${{ matrix.image }}.Dockerfile"
    assert build["with"]["tags"].endswith(":${{ github.sha }}")
    assert build["with"]["push"] is True
    assert any("steps.build.outputs.digest" in line for line in run_lines(doc))


def test_retrain_triggers():
    doc = wf("retrain.yml")
    push = doc["on"]["push"]
    assert push["branches"] == ["main"]
    assert set(push["paths"]) == {"data.dvc", "training/recipes.py"}
    assert doc["on"]["schedule"][0]["cron"]
    assert "workflow_dispatch" in doc["on"]
    lines = list(run_lines(doc))
    assert any(line.startswith("soraflow compile") for line in lines)
    assert any("soraflow submit" in line for line in lines)
    assert any("publish-manifests.sh" in line for line in lines)
    assert doc["concurrency"]["cancel-in-progress"] is False


def test_retrain_submission_gives_every_input_the_compiled_pipeline_requires(monkeypatch):
    """The workflow's `soraflow submit` line, parsed by the real CLI: the pipeline it submits (the retraining
    one, from data.dvc's revision) gets every required input; the curating pipeline would lack raw_manifest."""
    from soraflow.cli.main import build_parser
    from soraflow.cli.submit import submit_request
    from soraflow.pipelines.submit import check_params, required_inputs

    line = next(line for line in run_lines(wf("retrain.yml")) if "soraflow submit" in line)
    words = shlex.split(line.split("soraflow ", 1)[1].replace("${", "X{"))
    monkeypatch.chdir(REPO)  # --from-revision pinned reads this checkout's data.dvc
    start, params = submit_request(build_parser().parse_args(words))
    assert start == "revision"
    golden = REPO / "pipelines" / "compiled" / "soraflow-retrain.yaml"
    assert required_inputs(golden) == ["data_revision"]
    assert params["data_revision"] == yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
    check_params(golden, params)
    with pytest.raises(ValueError, match="raw_manifest"):
        check_params(REPO / "pipelines" / "compiled" / "soraflow.yaml", params)


def test_soraflow_calls_stay_within_the_cli_contract():
    seen = set()
    for path in FILES:
        for line in run_lines(load(path)):
            if "soraflow " not in line or "soraflow-" in line.split("soraflow ", 1)[0][-1:]:
                continue
            words = shlex.split(line.split("soraflow ", 1)[1].replace("${", "X{").rstrip("\\"))
            sub = words[0]
            if sub not in SORAFLOW_CONTRACT:
                continue
            seen.add(sub)
            flags = {w.split("=")[0] for w in words[1:] if w.startswith("--")}
            assert flags <= SORAFLOW_CONTRACT[sub], f"{path.name}: soraflow {sub} uses {flags - SORAFLOW_CONTRACT[sub]}"
    assert seen == set(SORAFLOW_CONTRACT)


def test_referenced_repo_files_exist():
    for path in FILES:
        text = path.read_text()
        for ref in set(re.findall(r"(?:infra|docker|pipelines)/[\w./-]+\.(?:sh|py|Dockerfile|yaml)", text)):
            if ref in CONTRACT_FILES:
                continue
            assert (REPO / ref).exists(), f"{path.name} refers to missing {ref}"
        for ref in re.findall(r"file: (docker/.+)", text):
            for image in ("cpu", "gpu"):
                assert ref.strip().replace("${{ matrix.image }}", image) in CONTRACT_FILES


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for path in FILES:
        for line in run_lines(load(path)):
            for target in re.findall(r"\bmake (\w+)", line):
                assert re.search(rf"^{target}:", makefile, re.M), f"{path.name}: make {target} is not a target"


def test_github_variables_are_terraform_outputs():
    """Every vars.X the workflows read is published by the github_actions_variables output."""
    out = outputs(tf_module(TF_ROOT))["github_actions_variables"]["value"]
    published = set(re.findall(r"(\w+)\s*=", out)) if isinstance(out, str) else set(out)
    used = set()
    for path in FILES:
        used |= set(re.findall(r"vars\.(\w+)", path.read_text()))
    assert used <= published, f"workflows read vars not published by terraform: {used - published}"


def test_gitops_scripts_are_valid_bash():
    import subprocess

    for script in (REPO / "infra" / "gitops").glob("*.sh"):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"
        assert "set -euo pipefail" in script.read_text()
