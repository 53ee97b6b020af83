"""The KFP components of the five training steps. They share one plain function (`train_step`), so they live
together; each body only forwards its artifacts' paths (see components/ingest/component.py).

`scheduler` is torchx's: `local_cwd` runs torchrun in this task's container (local runs, or a task that holds a
GPU node); `kubernetes` submits a Volcano gang job of `nnodes` x `nproc` GPUs with `image` and follows it.
The stage's run folder (checkpoints) is `run_root/<run_tag or run_id>/<stage>`: a retried task, or a new run
given the same `run_tag`, resumes from its last checkpoint.
"""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def vae_train_component(recipe: str, curated: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                        run_root: str = "", run_id: str = "", run_tag: str = "", scheduler: str = "local_cwd",
                        nnodes: int = 1, nproc: int = 1, image: str = "", queue: str = "default",
                        overrides: str = "{}"):
    """Train the Video DC-AE on the 256px set."""
    from soraflow.components.train_stage.artifacts import train_step

    meta = train_step("vae_train", recipe=recipe, dataset_path=curated.path, model_artifact_path=model.path,
                      init_from=None, autoencoder=None, run_root=run_root, run_id=run_tag or run_id,
                      scheduler=scheduler, nnodes=nnodes, nproc=nproc, image=image, queue=queue,
                      overrides_json=overrides)
    model.metadata.update(meta)
    for key in ("steps", "final_loss"):
        if key in meta:
            metrics.log_metric(key, meta[key])


def hunyuan_vae_component(recipe: str, curated: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                          weights: str = "", run_root: str = "", run_id: str = "", run_tag: str = "",
                          scheduler: str = "local_cwd", nnodes: int = 1, nproc: int = 1, image: str = "",
                          queue: str = "default", overrides: str = "{}"):
    """The autoencoder DiT stages 1-3 train on and decode with: trained here on the 256px training set, or, when
    `weights` names a HunyuanVideo VAE file, that file (nothing is trained; the artifact records the path)."""
    from soraflow.components.train_stage.artifacts import reference_weights, train_step

    if weights:
        meta = reference_weights(weights, model.path)
    else:
        meta = train_step("hunyuan_vae_train", recipe=recipe, dataset_path=curated.path,
                          model_artifact_path=model.path, init_from=None, autoencoder=None, run_root=run_root,
                          run_id=run_tag or run_id, scheduler=scheduler, nnodes=nnodes, nproc=nproc, image=image,
                          queue=queue, overrides_json=overrides)
    model.metadata.update(meta)
    for key in ("steps", "final_loss"):
        if key in meta:
            metrics.log_metric(key, meta[key])


def dit_stage_component(stage: str, recipe: str, curated: Input[Dataset], model: Output[Model],
                        metrics: Output[Metrics], previous: Input[Model] = None, autoencoder: Input[Model] = None,
                        init_weights: str = "", hunyuan_vae: str = "", text_encoders: str = "", run_root: str = "",
                        run_id: str = "", run_tag: str = "", scheduler: str = "local_cwd", nnodes: int = 1,
                        nproc: int = 1, image: str = "", queue: str = "default", overrides: str = "{}"):
    """DiT stage 1, 2 or 3: initialised from the previous stage's model, or (stage 1) from FLUX weights; decoding
    with `hunyuan_vae` when given, else the autoencoder step's weights."""
    from soraflow.components.train_stage.artifacts import autoencoder_file, model_file, train_step

    init_from = model_file(previous.path if previous is not None else None) or (init_weights or None)
    ae = hunyuan_vae or autoencoder_file(autoencoder.path if autoencoder is not None else None)
    meta = train_step(stage, recipe=recipe, dataset_path=curated.path, model_artifact_path=model.path,
                      init_from=init_from, autoencoder=ae, run_root=run_root,
                      run_id=run_tag or run_id, scheduler=scheduler, nnodes=nnodes, nproc=nproc, image=image,
                      queue=queue, overrides_json=overrides, text_encoders=text_encoders)
    model.metadata.update(meta)
    for key in ("steps", "final_loss"):
        if key in meta:
            metrics.log_metric(key, meta[key])


def distill_component(recipe: str, curated: Input[Dataset], teacher: Input[Model], autoencoder: Input[Model],
                      model: Output[Model], metrics: Output[Metrics], text_encoders: str = "", run_root: str = "",
                      run_id: str = "", run_tag: str = "", scheduler: str = "local_cwd", nnodes: int = 1,
                      nproc: int = 1, image: str = "", queue: str = "default", overrides: str = "{}"):
    """The high-compression DiT on the trained DC-AE's latents, initialised from the stage-3 model."""
    from soraflow.components.train_stage.artifacts import model_file, train_step

    meta = train_step("distill", recipe=recipe, dataset_path=curated.path, model_artifact_path=model.path,
                      init_from=model_file(teacher.path), autoencoder=model_file(autoencoder.path),
                      run_root=run_root, run_id=run_tag or run_id, scheduler=scheduler, nnodes=nnodes,
                      nproc=nproc, image=image, queue=queue, overrides_json=overrides, text_encoders=text_encoders)
    model.metadata.update(meta)
    for key in ("steps", "final_loss"):
        if key in meta:
            metrics.log_metric(key, meta[key])
