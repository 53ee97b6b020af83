"""The soraflow DAG (`docs/pipeline.md`) as a Kubeflow Pipelines v2 pipeline.

    ingest ──> filter ──> split ──┬──> vae_train ──────────────────────────────────┐
                                  │                                                v
                                  ├──> hunyuan_vae ──> dit_stage1 ──> 2 ──> 3 ──> distill ──> eval
                                  │                                        └──────────────> eval
                                  └──────────────────── (held-out clips) ─────────────────> eval

Components are built here from the plain KFP functions in `components/<step>/component.py`, with the images
of `ClusterSettings`, so one setting pins every image (by digest for released pipelines). Kubernetes settings
(pools, GPUs, /dev/shm, volumes, secrets, timeouts, retries, caching) are applied per task by `_on_cpu_pool` /
`_on_gpu_pool`; the local runner ignores them, so tests assert them on the compiled YAML.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's annotations as types.

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl
from kfp import kubernetes as k8s
from kfp.dsl import HTML, Artifact, Dataset, Model

from soraflow.pipelines.settings import ClusterSettings

PIPELINE_NAME = "soraflow"

# Local defaults: the tiny CPU recipes on the generated sample videos. Cluster runs pass the hardware recipes.
TINY_RECIPES = {"vae_train": "tiny-cpu-vae", "hunyuan_vae_train": "tiny-cpu-hunyuan-vae", "dit_stage1": "tiny-cpu-stage1", "dit_stage2": "tiny-cpu-stage2",
                "dit_stage3": "tiny-cpu-stage3", "distill": "tiny-cpu-distill"}
# `soraflow run --profile gpu`: the same DAG on one 80-141 GB GPU (training/recipes.py, gpu-demo-*)
GPU_RECIPES = {"vae_train": "gpu-demo-vae", "hunyuan_vae_train": "gpu-demo-hunyuan-vae",
               "dit_stage1": "gpu-demo-stage1", "dit_stage2": "gpu-demo-stage2", "dit_stage3": "gpu-demo-stage3",
               "distill": "gpu-demo-distill"}
CLUSTER_RECIPES = {"vae_train": "vae-dcae-256px-h200x8", "hunyuan_vae_train": "hunyuan-vae-256px-h200x8",
                   "dit_stage1": "stage1-256px-h200x8",
                   "dit_stage2": "stage2-256px-i2v-h200x8", "dit_stage3": "stage3-768px-sp4-h200x8",
                   "distill": "distill-768px-dcae-h200x8"}


# The pipeline's own outputs: what a run produced, wherever each step ran (or was served from cache).
PipelineOutputs = NamedTuple("Outputs", [("curated", Dataset), ("split", Dataset), ("hunyuan_vae", Model),
                                         ("dcae", Model), ("stage1", Model),
                                         ("stage2", Model), ("stage3", Model), ("distilled", Model),
                                         ("eval_results", Artifact), ("eval_report", HTML)])


@dataclass
class Components:
    data_pull: object
    ingest: object
    filter: object
    split: object
    hunyuan_vae: object
    vae_train: object
    dit_stage: object
    distill: object
    eval: object


def build_components(settings: ClusterSettings) -> Components:
    from soraflow.components.data.component import data_pull_component
    from soraflow.components.eval.component import eval_component
    from soraflow.components.filter.component import filter_component
    from soraflow.components.ingest.component import ingest_component
    from soraflow.components.split.component import split_component
    from soraflow.components.train_stage.component import (
        dit_stage_component,
        distill_component,
        hunyuan_vae_component,
        vae_train_component,
    )

    def on(image, fn):  # the image carries the project and kfp: nothing is installed at run time
        return dsl.component(fn, base_image=image, install_kfp_package=False)

    return Components(
        data_pull=on(settings.cpu_image, data_pull_component),
        ingest=on(settings.cpu_image, ingest_component),
        filter=on(settings.cpu_image, filter_component),
        split=on(settings.cpu_image, split_component),
        hunyuan_vae=on(settings.gpu_image, hunyuan_vae_component),
        vae_train=on(settings.gpu_image, vae_train_component),
        dit_stage=on(settings.gpu_image, dit_stage_component),
        distill=on(settings.gpu_image, distill_component),
        eval=on(settings.gpu_image, eval_component),
    )


def _on_cpu_pool(task, s: ClusterSettings, *, cache: bool, timeout_s: int | None = None) -> None:
    """CPU steps (and training launchers): the CPU pool, the data volume; cached only when deterministic (the
    cache key covers their inputs, which include the data revision)."""
    task.set_caching_options(cache)
    task.set_cpu_request("4").set_memory_request("16G")
    k8s.add_node_selector(task, label_key=s.pool_label, label_value=s.cpu_pool)
    k8s.mount_pvc(task, pvc_name=s.data_pvc, mount_path=s.data_mount)
    k8s.use_secret_as_env(task, secret_name=s.bucket_secret,
                          secret_key_to_env={key: env for env, key in s.bucket_secret_env.items()}, optional=True)
    k8s.set_timeout(task, timeout_s or s.cpu_step_timeout_s)
    if s.pushgateway:
        task.set_env_variable("SORAFLOW_PUSHGATEWAY", s.pushgateway)


def _on_gpu_pool(task, s: ClusterSettings, *, timeout_s: int, retries: int, gpus: int | None = None) -> None:
    """GPU steps: the GPU pool (toleration + selector), `gpus` (default all of a node), /dev/shm in memory, the
    data and checkpoint volume, bucket credentials, a timeout, and retries only where a retry resumes."""
    task.set_caching_options(False)
    task.set_accelerator_type(s.accelerator).set_accelerator_limit(gpus or s.gpus_per_node)
    k8s.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    k8s.add_node_selector(task, label_key=s.pool_label, label_value=s.gpu_pool)
    k8s.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=s.shm_size)
    k8s.mount_pvc(task, pvc_name=s.data_pvc, mount_path=s.data_mount)
    k8s.use_secret_as_env(task, secret_name=s.bucket_secret,
                          secret_key_to_env={key: env for env, key in s.bucket_secret_env.items()}, optional=True)
    k8s.set_timeout(task, timeout_s)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)


def build_pipeline(settings: ClusterSettings | None = None, *, start: str = "raw"):
    """The pipeline function for `settings` (images, pools): compile it, or call it under `kfp.local`.

    `start="raw"` curates from a raw manifest (ingest -> filter); `start="revision"` is the retraining
    pipeline (`soraflow-retrain`): it begins with the curated dataset a `data.dvc` revision pins, fetched from
    the DVC remote, and runs the same training and eval steps. Two pipelines rather than a condition inside one:
    KFP's local runner cannot merge an artifact out of If/Else branches (dsl.OneOf), and both must run here."""
    if start not in ("raw", "revision"):
        raise ValueError(f"start must be 'raw' or 'revision', got {start!r}")
    s = settings or ClusterSettings()
    c = build_components(s)
    return _retrain_pipeline(c, s) if start == "revision" else _curating_pipeline(c, s)


def _place_training(task, s: ClusterSettings) -> None:
    """A training step: a launcher on the CPU pool that follows its Volcano job, or the job itself on the GPU
    pool."""
    if s.train_launcher == "volcano":  # the job's pods get the GPUs; this task only follows the job
        _on_cpu_pool(task, s, cache=False, timeout_s=s.train_step_timeout_s)
        # the launcher mounts the pods' data volume into the Volcano job at the same path
        task.set_env_variable("SORAFLOW_DATA_PVC", s.data_pvc)
        task.set_env_variable("SORAFLOW_DATA_MOUNT", s.data_mount)
        if s.train_retries:
            task.set_retry(num_retries=s.train_retries, backoff_duration="60s", backoff_factor=2.0)
    else:
        _on_gpu_pool(task, s, timeout_s=s.train_step_timeout_s, retries=s.train_retries)


def _train_and_eval(c, s: ClusterSettings, curated_set, run_id, *, vae_recipe, hunyuan_vae_recipe, stage1_recipe,
                    stage2_recipe, stage3_recipe, distill_recipe, flux_weights, hunyuan_vae, text_encoders, run_root,
                    run_tag, train_scheduler, nnodes, nproc, overrides, eval_suite, eval_num_frames, eval_resolution,
                    eval_height, eval_width, eval_steps, eval_seeds, vbench_python, vbench_weights):
    """split -> the training stages -> eval, from the curated set (the filter's, or a pinned revision's)."""
    # training steps read the split's tables (the curated sets minus the held-out sources)
    split = c.split(curated=curated_set)
    split.set_display_name("split")
    _on_cpu_pool(split, s, cache=True)
    curated = split.outputs["split"]

    common = dict(curated=curated, run_root=run_root, run_id=run_id, run_tag=run_tag, scheduler=train_scheduler,
                  nnodes=nnodes, nproc=nproc, image=s.gpu_image, queue=s.volcano_queue, overrides=overrides)

    vae = c.vae_train(recipe=vae_recipe, **common)
    vae.set_display_name("vae_train")
    _place_training(vae, s)

    # the autoencoder of stages 1-3: trained on the training set, or the given HunyuanVideo VAE weights
    hy = c.hunyuan_vae(recipe=hunyuan_vae_recipe, weights=hunyuan_vae, **common)
    hy.set_display_name("hunyuan_vae")
    _place_training(hy, s)
    hy_model = hy.outputs["model"]

    previous, stage_tasks = None, []
    for stage, recipe in (("dit_stage1", stage1_recipe), ("dit_stage2", stage2_recipe),
                          ("dit_stage3", stage3_recipe)):
        extra = {"previous": previous} if previous is not None else {"init_weights": flux_weights}
        task = c.dit_stage(stage=stage, recipe=recipe, autoencoder=hy_model, hunyuan_vae=hunyuan_vae,
                           text_encoders=text_encoders, **extra, **common)
        task.set_display_name(stage)
        _place_training(task, s)
        previous = task.outputs["model"]
        stage_tasks.append(task)

    distill = c.distill(recipe=distill_recipe, teacher=previous, autoencoder=vae.outputs["model"],
                        text_encoders=text_encoders, **common)
    distill.set_display_name("distill")
    _place_training(distill, s)

    evaluate = c.eval(stage3=previous, distilled=distill.outputs["model"], autoencoder=vae.outputs["model"],
                      stage1=stage_tasks[0].outputs["model"], stage2=stage_tasks[1].outputs["model"],
                      stage_ae=hy_model, curated=curated, hunyuan_vae=hunyuan_vae,
                      text_encoders=text_encoders, suite=eval_suite,
                      num_frames=eval_num_frames, resolution=eval_resolution, height=eval_height,
                      width=eval_width, steps=eval_steps, seeds=eval_seeds,
                      vbench_python=vbench_python, vbench_weights=vbench_weights)
    evaluate.set_display_name("eval")
    # one GPU samples one video at a time; no retries: sampling would restart from scratch
    _on_gpu_pool(evaluate, s, timeout_s=s.eval_timeout_s, retries=0, gpus=1)

    return PipelineOutputs(curated=curated_set, split=curated, hunyuan_vae=hy_model,
                           dcae=vae.outputs["model"], stage1=stage_tasks[0].outputs["model"],
                           stage2=stage_tasks[1].outputs["model"], stage3=previous,
                           distilled=distill.outputs["model"], eval_results=evaluate.outputs["results"],
                           eval_report=evaluate.outputs["report"])


# the parameters both pipelines hand to the training and eval steps
_TRAIN_PARAMS = ("vae_recipe", "hunyuan_vae_recipe", "stage1_recipe", "stage2_recipe", "stage3_recipe", "distill_recipe",
         "flux_weights", "hunyuan_vae", "text_encoders", "run_root", "run_tag", "train_scheduler", "nnodes",
         "nproc", "overrides", "eval_suite", "eval_num_frames", "eval_resolution", "eval_height", "eval_width",
         "eval_steps", "eval_seeds", "vbench_python", "vbench_weights")


# The pipeline functions spell out every parameter: KFP reads a pipeline's inputs, their types and defaults
# from the function's signature.
def _retrain_pipeline(c, s: ClusterSettings):
    @dsl.pipeline(name=f"{PIPELINE_NAME}-retrain",
                  description="Open-Sora 2.0 retraining from a pinned dataset revision (data.dvc): DC-AE, DiT "
                              "stages 1-3, distill, eval")
    def soraflow_retrain(
        data_revision: str,
        dvc_remote: str = s.dvc_remote,
        vae_recipe: str = TINY_RECIPES["vae_train"],
        hunyuan_vae_recipe: str = TINY_RECIPES["hunyuan_vae_train"],
        stage1_recipe: str = TINY_RECIPES["dit_stage1"],
        stage2_recipe: str = TINY_RECIPES["dit_stage2"],
        stage3_recipe: str = TINY_RECIPES["dit_stage3"],
        distill_recipe: str = TINY_RECIPES["distill"],
        flux_weights: str = "",
        hunyuan_vae: str = "",
        text_encoders: str = "",
        run_root: str = "",
        run_tag: str = "",
        train_scheduler: str = "local_cwd" if s.train_launcher == "in_pod" else "kubernetes",
        nnodes: int = 1,
        nproc: int = 1,
        overrides: str = "{}",
        eval_suite: str = "mini",
        eval_num_frames: int = 9,
        eval_resolution: str = "256px",
        eval_height: int = 64,
        eval_width: int = 64,
        eval_steps: int = 4,
        eval_seeds: str = "0",
        vbench_python: str = "",
        vbench_weights: str = "",
    ) -> PipelineOutputs:
        args = dict(locals())
        pulled = c.data_pull(data_revision=data_revision, dvc_remote=dvc_remote)
        pulled.set_display_name("data_pull")
        _on_cpu_pool(pulled, s, cache=True)  # keyed on the revision: the same md5 is the same bytes
        return _train_and_eval(c, s, pulled.outputs["curated"], dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                              **{k: args[k] for k in _TRAIN_PARAMS})
    return soraflow_retrain


def _curating_pipeline(c, s: ClusterSettings):
    @dsl.pipeline(name=PIPELINE_NAME, description="Open-Sora 2.0: curation, DC-AE, DiT stages 1-3, distill, eval")
    def soraflow(
        raw_manifest: str,
        raw_manifest_digest: str = "",
        data_revision: str = "",
        clip_store: str = "",
        vae_recipe: str = TINY_RECIPES["vae_train"],
        hunyuan_vae_recipe: str = TINY_RECIPES["hunyuan_vae_train"],
        stage1_recipe: str = TINY_RECIPES["dit_stage1"],
        stage2_recipe: str = TINY_RECIPES["dit_stage2"],
        stage3_recipe: str = TINY_RECIPES["dit_stage3"],
        distill_recipe: str = TINY_RECIPES["distill"],
        flux_weights: str = "",
        hunyuan_vae: str = "",
        text_encoders: str = "",
        run_root: str = "",
        run_tag: str = "",
        train_scheduler: str = "local_cwd" if s.train_launcher == "in_pod" else "kubernetes",
        nnodes: int = 1,
        nproc: int = 1,
        overrides: str = "{}",
        eval_suite: str = "mini",
        eval_num_frames: int = 9,
        eval_resolution: str = "256px",
        eval_height: int = 64,
        eval_width: int = 64,
        eval_steps: int = 4,
        eval_seeds: str = "0",
        vbench_python: str = "",
        vbench_weights: str = "",
    ) -> PipelineOutputs:
        args = dict(locals())
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        # the manifest's digest is an input, so KFP's cache key follows its content, not just its path
        ingest = c.ingest(raw_manifest=raw_manifest, raw_manifest_digest=raw_manifest_digest, clip_store=clip_store,
                          data_revision=data_revision, run_id=run_id, overrides=overrides)
        ingest.set_display_name("ingest")
        _on_cpu_pool(ingest, s, cache=True)

        curate = c.filter(clips=ingest.outputs["clips"], data_revision=data_revision, run_id=run_id,
                          overrides=overrides)
        curate.set_display_name("filter")
        _on_cpu_pool(curate, s, cache=True)
        return _train_and_eval(c, s, curate.outputs["curated"], run_id, **{k: args[k] for k in _TRAIN_PARAMS})
    return soraflow


def compile_pipeline(path: str, settings: ClusterSettings | None = None, *, release: bool = False,
                     start: str = "raw") -> str:
    """Write the compiled pipeline (KFP IR YAML); `release=True` refuses images not pinned by digest;
    `start="revision"` compiles the retraining pipeline (from a data.dvc revision)."""
    from kfp import compiler

    s = settings or ClusterSettings()
    if release:
        s.require_digests()
    compiler.Compiler().compile(build_pipeline(s, start=start), package_path=path)
    return path
