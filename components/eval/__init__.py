"""The eval step: VBench where its weights are mounted, labelled offline metrics everywhere, a readable report."""

from .eval import EvalModel, EvalResult, kfp_metrics, read_manifest, run_eval, sample_models, score_videos
from .suite import load_suite, prompt_from_file_name, video_file_name
from .vbench_scores import aggregate, normalize

__all__ = ["EvalModel", "EvalResult", "run_eval", "sample_models", "score_videos", "read_manifest", "kfp_metrics",
           "load_suite", "video_file_name", "prompt_from_file_name", "aggregate", "normalize"]
