"""Submit the compiled pipeline to a KFP endpoint: upload it (or a new version of it) and start a run."""

from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path

from pipelines.dag import PIPELINE_NAME, compile_pipeline
from pipelines.settings import ClusterSettings


def submit(host: str, settings: ClusterSettings, *, params: dict, experiment: str = "soraflow",
           version_name: str | None = None, run_name: str | None = None, namespace: str | None = None) -> dict:
    """Compile with digest-pinned images, upload as a new version of pipeline `soraflow`, run it."""
    import kfp

    client = kfp.Client(host=host, namespace=namespace)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    version_name = version_name or f"{PIPELINE_NAME}-{stamp}"
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(str(Path(tmp) / "soraflow.yaml"), settings, release=True)
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(package, pipeline_name=PIPELINE_NAME)
            pipeline_id = pipeline.pipeline_id
            version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(package, pipeline_version_name=version_name,
                                                     pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=namespace)
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=run_name or f"{PIPELINE_NAME}-{stamp}",
                              params=params, pipeline_id=pipeline_id, version_id=version_id)
    return {"pipeline_id": pipeline_id, "version_id": version_id, "run_id": run.run_id,
            "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}
