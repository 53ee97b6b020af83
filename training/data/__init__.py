"""Multi-bucket training data (spec §D.1, §D.4, §D.5, §F.6): bucket assignment, the variable-shape batch
sampler, the video/text dataset and the resumable DataLoader."""

from .buckets import BucketConfig, BucketId, sampling_intervals
from .dataset import VideoTextDataset, make_caption, resize_crop, temporal_indices
from .loader import BucketDataLoader, build_dataloader, collate_skip
from .sampler import VariableVideoBatchSampler, data_revision, parse_index
from common.clip_table import load_table

__all__ = [
    "BucketConfig", "BucketId", "sampling_intervals", "VideoTextDataset", "make_caption", "resize_crop",
    "temporal_indices", "BucketDataLoader", "build_dataloader", "collate_skip", "VariableVideoBatchSampler",
    "data_revision", "parse_index", "load_table",
]
