"""The KFP component of the eval step (see components/ingest/component.py for the conventions)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def eval_component(stage3: Input[Model], distilled: Input[Model], autoencoder: Input[Model],
                   curated: Input[Dataset], report: Output[HTML], summary: Output[Markdown],
                   results: Output[Artifact], metrics: Output[Metrics], hunyuan_vae: str = "",
                   text_encoders: str = "", suite: str = "mini", num_frames: int = 9, resolution: str = "256px",
                   height: int = 0, width: int = 0, steps: int = 4, vbench_python: str = "",
                   vbench_weights: str = ""):
    """Sample both models on a prompt suite, score them (VBench where mounted, offline metrics always), report.
    `height`/`width` (when > 0) override the size that `resolution` gives (the tiny local models use 64x64)."""
    import os
    import shutil

    from components.eval.eval import kfp_metrics
    from components.eval.pipeline_step import eval_step

    result = eval_step(stage3.path, distilled.path, autoencoder.path, results.path, hunyuan_vae=hunyuan_vae,
                       text_encoders=text_encoders, reference_clips=os.path.join(curated.path, "set_256px.parquet"),
                       suite=suite, num_frames=num_frames, resolution=resolution, height=height or None,
                       width=width or None, steps=steps,
                       vbench_python=vbench_python or None, vbench_weights=vbench_weights or None)
    shutil.copyfile(result.report_html, report.path)
    shutil.copyfile(result.report_md, summary.path)
    for name, value in kfp_metrics(result.metrics).items():
        metrics.log_metric(name, value)
