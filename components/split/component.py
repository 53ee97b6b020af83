"""The KFP component around `split_dataset` (see components/ingest/component.py for the conventions)."""

from kfp.dsl import Dataset, Input, Metrics, Output


def split_component(curated: Input[Dataset], split: Output[Dataset], metrics: Output[Metrics],
                    heldout_fraction: float = 0.125):
    """The curated sets minus held-out source videos (training tables) + the held-out clips (heldout.parquet)."""
    import json
    from pathlib import Path

    from soraflow.components.split import split_dataset

    result = split_dataset(curated.path, split.path, fraction=heldout_fraction)
    split.metadata.update({**result.counts, "heldout_table": "heldout.parquet"})
    for key, value in result.counts.items():
        metrics.log_metric(key, value)
    # KFP's local cache reuses a task only when every output artifact exists on disk
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=1))
