"""The retraining pipeline: compiled from the same DAG, it starts from a data.dvc revision, not a manifest."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from soraflow.pipelines.dag import compile_pipeline
from soraflow.pipelines.settings import ClusterSettings
from soraflow.pipelines.submit import required_inputs

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "soraflow-retrain.yaml"


def _normalise(text: str) -> str:
    return re.sub(r"^sdkVersion: .*$", "sdkVersion: <kfp>", text, flags=re.M)


def test_golden_retrain_pipeline_is_current(tmp_path):
    path = compile_pipeline(str(tmp_path / "r.yaml"), start="revision")
    assert GOLDEN.is_file(), "pipelines/compiled/soraflow-retrain.yaml missing: run `soraflow compile --start revision`"
    assert _normalise(Path(path).read_text()) == _normalise(GOLDEN.read_text()), (
        "pipelines/compiled/soraflow-retrain.yaml is stale: run `soraflow compile --start revision`")


def test_retrain_pipeline_fetches_the_revision_and_skips_curation(tmp_path):
    spec = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "r.yaml"), start="revision")).read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert spec["pipelineInfo"]["name"] == "soraflow-retrain"
    assert "data-pull-component" in tasks and not {"ingest-component", "filter-component"} & set(tasks)
    split = tasks["split-component"]["inputs"]["artifacts"]["curated"]["taskOutputArtifact"]
    assert split["producerTask"] == "data-pull-component"
    pull = tasks["data-pull-component"]["inputs"]["parameters"]
    assert pull["data_revision"]["componentInputParameter"] == "data_revision"
    assert required_inputs(tmp_path / "r.yaml") == ["data_revision"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["dvc_remote"]["defaultValue"] == ClusterSettings().dvc_remote
    # the same training steps follow as in the curating pipeline
    raw = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text()))["root"]["dag"]["tasks"]
    assert set(tasks) - {"data-pull-component"} == set(raw) - {"ingest-component", "filter-component"}
