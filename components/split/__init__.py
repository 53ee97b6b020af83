"""The split step: hold clips out of training, by source video, so every model is scored on content it never saw."""

from soraflow.components.split.split import SplitResult, heldout_sources, split_dataset

__all__ = ["SplitResult", "heldout_sources", "split_dataset"]
