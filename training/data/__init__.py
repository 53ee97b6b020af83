"""Multi-bucket training data (docs/models.md#dataset-files, #buckets, #loading-and-transforms,
docs/architecture.md#data-loading): bucket assignment, the variable-shape batch
sampler, the video/text dataset and the resumable DataLoader.

Names are loaded on first use: the launchers and pipeline tasks read clip tables (`soraflow.common.clip_table`)
before a trainer starts, and importing the dataset and loader here would import torch in each of them."""

import importlib

_WHERE = {
    "BucketConfig": "buckets", "BucketId": "buckets", "sampling_intervals": "buckets",
    "VideoTextDataset": "dataset", "make_caption": "dataset", "resize_crop": "dataset", "temporal_indices": "dataset",
    "BucketDataLoader": "loader", "build_dataloader": "loader", "collate_skip": "loader",
    "VariableVideoBatchSampler": "sampler", "data_revision": "sampler", "parse_index": "sampler",
    "load_table": "soraflow.common.clip_table",
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _WHERE[name]
    module = importlib.import_module(where) if "." in where else importlib.import_module(f".{where}", __name__)
    return getattr(module, name)
