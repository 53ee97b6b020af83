"""Text/image-to-video generation: prompt (+ optional reference image) -> video file."""

from .generate import PIPELINES, GenerateOptions, GenerateResult, build_pipeline, generate

__all__ = ["PIPELINES", "GenerateOptions", "GenerateResult", "build_pipeline", "generate"]
