"""Submit the compiled pipeline to a KFP endpoint: upload it (or a new version of it) and start a run."""

from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path

from soraflow.pipelines.dag import PIPELINE_NAME, compile_pipeline
from soraflow.pipelines.settings import ClusterSettings


RECIPE_PARAMS = {"vae_train": "vae_recipe", "hunyuan_vae_train": "hunyuan_vae_recipe", "dit_stage1": "stage1_recipe", "dit_stage2": "stage2_recipe",
                 "dit_stage3": "stage3_recipe", "distill": "distill_recipe"}


def recipe_params(recipes: dict) -> dict:
    """{step: recipe} -> the pipeline's recipe parameters, checked against the known recipes before upload."""
    from soraflow.training.recipes import get_recipe

    out = {}
    for step, recipe in recipes.items():
        if step not in RECIPE_PARAMS:
            raise ValueError(f"--recipe names unknown step {step!r}; steps: {sorted(RECIPE_PARAMS)}")
        if get_recipe(recipe).stage != step:
            raise ValueError(f"recipe {recipe!r} is a {get_recipe(recipe).stage} recipe, not a {step} one")
        out[RECIPE_PARAMS[step]] = recipe
    return out


def pipeline_name(start: str = "raw") -> str:
    return PIPELINE_NAME if start == "raw" else f"{PIPELINE_NAME}-retrain"


def required_inputs(package: str | Path) -> list[str]:
    """The parameters a compiled pipeline cannot run without (no default)."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))  # the pipeline spec; the platform spec follows
    params = spec["root"]["inputDefinitions"]["parameters"]
    return sorted(k for k, v in params.items() if not v.get("isOptional"))


def check_params(package: str | Path, params: dict) -> None:
    """A submission that lacks a required input fails here, naming it, not minutes later in the KFP UI."""
    missing = [k for k in required_inputs(package) if k not in params]
    if missing:
        raise ValueError(f"the pipeline needs {', '.join(missing)} (give --param NAME=VALUE"
                         f"{' or --from-revision' if 'data_revision' in missing else ''})")


def pinned_revision(repo: str | Path = ".") -> str:
    """The dataset revision `data.dvc` pins (what the retraining pipeline fetches)."""
    from soraflow.components.data import revision

    rev = revision(repo)
    if rev is None:
        raise ValueError(f"{Path(repo) / 'data.dvc'} does not exist: no dataset revision is pinned")
    return rev["data_revision"]


def submit(host: str, settings: ClusterSettings, *, params: dict, experiment: str = "soraflow",
           version_name: str | None = None, run_name: str | None = None, namespace: str | None = None,
           schedule: str | None = None, start: str = "raw") -> dict:
    """Compile with digest-pinned images, upload as a new version of pipeline `soraflow` (or `soraflow-retrain`
    with start="revision"), then start a run, or a recurring run when `schedule` (a cron expression, seconds
    first as KFP expects) is given. Missing required parameters fail before anything is uploaded."""
    import kfp

    name_of_pipeline = pipeline_name(start)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    version_name = version_name or f"{name_of_pipeline}-{stamp}"
    if start == "raw" and params.get("raw_manifest") and "raw_manifest_digest" not in params:
        from soraflow.components.ingest.ingest import manifest_digest

        try:  # the cache key must follow the manifest's content (reading it may need bucket credentials here)
            params = {**params, "raw_manifest_digest": manifest_digest(params["raw_manifest"])}
        except Exception as exc:  # noqa: BLE001 - any fsspec/credential error
            raise ValueError(f"cannot read {params['raw_manifest']} to digest it ({exc}); give "
                             f"--param raw_manifest_digest=md5:<hex> (see soraflow.components.ingest.manifest_digest)") from exc
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(str(Path(tmp) / "soraflow.yaml"), settings, release=True, start=start)
        check_params(package, params)
        client = kfp.Client(host=host, namespace=namespace)
        pipeline_id = client.get_pipeline_id(name_of_pipeline)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(package, pipeline_name=name_of_pipeline)
            pipeline_id = pipeline.pipeline_id
            version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(package, pipeline_version_name=version_name,
                                                     pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
    exp = client.create_experiment(experiment, namespace=namespace)
    name = run_name or f"{name_of_pipeline}-{stamp}"
    if schedule:
        job = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=name, cron_expression=schedule,
                                          params=params, pipeline_id=pipeline_id, version_id=version_id)
        return {"pipeline_id": pipeline_id, "version_id": version_id, "recurring_run_id": job.recurring_run_id,
                "url": f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}"}
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=params,
                              pipeline_id=pipeline_id, version_id=version_id)
    return {"pipeline_id": pipeline_id, "version_id": version_id, "run_id": run.run_id,
            "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}
