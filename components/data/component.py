"""The KFP component that starts a pipeline from a pinned dataset revision instead of ingest + filter."""

from kfp.dsl import Dataset, Output


def data_pull_component(data_revision: str, dvc_remote: str, curated: Output[Dataset]):
    """The curated dataset `data_revision` (data.dvc's md5) from the DVC remote `dvc_remote`, laid out as the
    filter writes it (tables with clips/ paths, stats.json, validation/), every file checked against its md5."""
    from soraflow.components.data.dataset import fetch_revision

    got = fetch_revision(dvc_remote, data_revision, curated.path)
    curated.metadata.update({"data_revision": got["data_revision"], "nfiles": got["nfiles"], "remote": dvc_remote,
                             "set_256px": "set_256px.parquet", "set_768px": "set_768px.parquet"})
