"""The KFP component around `run_filter` (see components/ingest/component.py for the conventions)."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def filter_component(clips: Input[Dataset], curated: Output[Dataset], validation_report: Output[Markdown],
                     metrics: Output[Metrics], workers: int = 2, aesthetic_weights: str = "", ocr_weights: str = "",
                     data_revision: str = "", run_id: str = "", overrides: str = "{}"):
    """Clip table -> the 256px / 768px sets with rejection reasons, validated (a failing suite fails the task)."""
    import json
    import os
    from pathlib import Path

    from soraflow.components.filter import run_filter

    failed_dir = Path(curated.path).parent / "failed-validation"
    step_overrides = json.loads(overrides).get("filter", {})
    try:
        result = run_filter(os.path.join(clips.path, "clips.parquet"), curated.path, num_workers=workers,
                            aesthetic_weights=aesthetic_weights or None, ocr_weights=ocr_weights or None,
                            progress=False, report_dir=failed_dir, **step_overrides)
    finally:  # the report is the artifact people read, whether the suites passed (in the set) or not
        reports = sorted((Path(curated.path) / "validation").glob("*.md")) + sorted(failed_dir.glob("*.md"))
        Path(validation_report.path).write_text(
            "\n\n".join(p.read_text() for p in reports) or "no validation report was written\n")
    counts = result.counts
    curated.metadata.update({"data_revision": data_revision, "set_256px": "set_256px.parquet",
                             "set_768px": "set_768px.parquet",
                             "input": counts["input"], "kept_256": counts["kept_256"],
                             "kept_768": counts["kept_768"]})
    for key in ("input", "kept_256", "kept_768", "needs_caption"):
        metrics.log_metric(key, counts[key])
    metrics.log_metric("seconds", round(result.seconds, 3))
    # the numbers as a file too: readable beside the artifacts, and KFP's local cache reuses a task only when
    # every output artifact exists on disk
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=1))
    if os.environ.get("SORAFLOW_PUSHGATEWAY"):  # completion counts for Prometheus (a failed push only warns)
        from soraflow.monitoring.batch import filter_groups, push_or_warn

        push_or_warn(os.environ["SORAFLOW_PUSHGATEWAY"], "filter", filter_groups(counts, seconds=result.seconds),
                     run_id=run_id or None)
