"""The KFP component of the eval step (see components/ingest/component.py for the conventions)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def eval_component(stage3: Input[Model], distilled: Input[Model], autoencoder: Input[Model],
                   curated: Input[Dataset], report: Output[HTML], summary: Output[Markdown],
                   results: Output[Artifact], metrics: Output[Metrics], stage1: Input[Model] = None,
                   stage2: Input[Model] = None, stage_ae: Input[Model] = None, hunyuan_vae: str = "",
                   text_encoders: str = "", suite: str = "mini", num_frames: int = 9, resolution: str = "256px",
                   height: int = 0, width: int = 0, steps: int = 4, seeds: str = "0",
                   vbench_python: str = "", vbench_weights: str = ""):
    """Sample both models (and the same networks at init) on a prompt suite, score them (VBench where mounted,
    offline metrics always), check every trained model against its initialisation on the held-out clips, report.
    `height`/`width` (when > 0) override the size that `resolution` gives (the tiny local models use 64x64);
    `suite="heldout"` prompts with the held-out clips' captions; `seeds` is a comma-separated list."""
    import os
    import shutil

    from soraflow.components.eval.eval import kfp_metrics
    from soraflow.components.eval.pipeline_step import eval_step

    heldout = os.path.join(curated.path, "heldout.parquet")  # the split step's held-out clips
    reference = heldout if os.path.isfile(heldout) else os.path.join(curated.path, "set_256px.parquet")
    result = eval_step(stage3.path, distilled.path, autoencoder.path, results.path, hunyuan_vae=hunyuan_vae,
                       text_encoders=text_encoders, reference_clips=reference,
                       stage1_dir=stage1.path if stage1 is not None else None,
                       stage2_dir=stage2.path if stage2 is not None else None,
                       stage_ae_dir=stage_ae.path if stage_ae is not None else None,
                       suite=suite, seeds=tuple(int(x) for x in seeds.split(",") if x.strip()),
                       num_frames=num_frames, resolution=resolution, height=height or None,
                       width=width or None, steps=steps,
                       vbench_python=vbench_python or None, vbench_weights=vbench_weights or None)
    shutil.copyfile(result.report_html, report.path)
    shutil.copyfile(result.report_md, summary.path)
    for name, value in kfp_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    learning = result.metrics.get("learning")
    if learning:
        metrics.log_metric("learning.passed", float(learning["passed"]))
