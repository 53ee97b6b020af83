"""Generated sample videos with known ground truth (camera motion, cuts, borders, expected rejections)."""

from soraflow.components.sample_data.generate import load_ground_truth, make_sample_videos, pan, zoom

__all__ = ["make_sample_videos", "load_ground_truth", "pan", "zoom"]
