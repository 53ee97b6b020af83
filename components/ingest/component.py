"""The KFP component around `ingest`: the container image has the project installed, so the function body only
imports it (nothing is pip-installed at run time). Its source is what KFP embeds in the compiled pipeline."""

from kfp.dsl import Dataset, Metrics, Output


def ingest_component(raw_manifest: str, clips: Output[Dataset], metrics: Output[Metrics], workers: int = 2,
                     clip_store: str = "", data_revision: str = "", run_id: str = "", overrides: str = "{}",
                     raw_manifest_digest: str = ""):
    """Raw videos (a folder or a manifest on local disk, http(s), s3 or gs) -> clips + `clips.parquet`.

    `raw_manifest_digest` (`soraflow.components.ingest.manifest_digest` of the input, given at submission) makes KFP's
    cache key follow the manifest's content, not only its path; ingest refuses an input that no longer matches.

    With `clip_store` (a folder on the shared data volume) the clip files go there, keyed by data revision, and
    the artifact holds only the tables: training pods outside KFP (Volcano jobs) read the same paths.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    from soraflow.components.ingest import ingest
    from soraflow.components.ingest.ingest import verify_manifest

    verify_manifest(raw_manifest, raw_manifest_digest)

    out_dir = os.path.join(clip_store, data_revision or "unversioned") if clip_store else clips.path
    step_overrides = json.loads(overrides).get("ingest", {})
    result = ingest(raw_manifest, out_dir, workers=workers, progress=False, **step_overrides)
    if clip_store:
        os.makedirs(clips.path, exist_ok=True)
        for table in (result.clips_path, result.rejected_path):
            shutil.copy2(table, os.path.join(clips.path, os.path.basename(table)))
    clips.metadata.update({"table": "clips.parquet", "num_clips": len(result.clips), "data_revision": data_revision,
                           "clip_store": out_dir, "rejected": int(sum(result.counts.values()))})
    metrics.log_metric("clips", len(result.clips))
    metrics.log_metric("sources_rejected", int(sum(result.counts.values())))
    metrics.log_metric("seconds", round(result.seconds, 3))
    # the numbers as a file too: readable beside the artifacts, and KFP's local cache reuses a task only when
    # every output artifact exists on disk
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=1))
    if os.environ.get("SORAFLOW_PUSHGATEWAY"):  # completion counts for Prometheus (a failed push only warns)
        from soraflow.monitoring.batch import ingest_groups, push_or_warn

        push_or_warn(os.environ["SORAFLOW_PUSHGATEWAY"], "ingest", ingest_groups(result), run_id=run_id or None)
