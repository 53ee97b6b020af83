"""Submit the compiled pipeline to a KFP endpoint: upload it (or a new version of it) and start a run."""

from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path

from pipelines.dag import PIPELINE_NAME, compile_pipeline
from pipelines.settings import ClusterSettings


RECIPE_PARAMS = {"vae_train": "vae_recipe", "hunyuan_vae_train": "hunyuan_vae_recipe", "dit_stage1": "stage1_recipe", "dit_stage2": "stage2_recipe",
                 "dit_stage3": "stage3_recipe", "distill": "distill_recipe"}


def recipe_params(recipes: dict) -> dict:
    """{step: recipe} -> the pipeline's recipe parameters, checked against the known recipes before upload."""
    from training.recipes import get_recipe

    out = {}
    for step, recipe in recipes.items():
        if step not in RECIPE_PARAMS:
            raise ValueError(f"--recipe names unknown step {step!r}; steps: {sorted(RECIPE_PARAMS)}")
        if get_recipe(recipe).stage != step:
            raise ValueError(f"recipe {recipe!r} is a {get_recipe(recipe).stage} recipe, not a {step} one")
        out[RECIPE_PARAMS[step]] = recipe
    return out


def submit(host: str, settings: ClusterSettings, *, params: dict, experiment: str = "soraflow",
           version_name: str | None = None, run_name: str | None = None, namespace: str | None = None,
           schedule: str | None = None) -> dict:
    """Compile with digest-pinned images, upload as a new version of pipeline `soraflow`, then start a run, or a
    recurring run when `schedule` (a cron expression, seconds first as KFP expects) is given."""
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
    name = run_name or f"{PIPELINE_NAME}-{stamp}"
    if schedule:
        job = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=name, cron_expression=schedule,
                                          params=params, pipeline_id=pipeline_id, version_id=version_id)
        return {"pipeline_id": pipeline_id, "version_id": version_id, "recurring_run_id": job.recurring_run_id,
                "url": f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}"}
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=params,
                              pipeline_id=pipeline_id, version_id=version_id)
    return {"pipeline_id": pipeline_id, "version_id": version_id, "run_id": run.run_id,
            "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}
