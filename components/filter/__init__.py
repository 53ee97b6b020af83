"""The filter step: per-clip scorers, the 256px/768px data pyramid, validation and DVC versioning (`docs/curation.md`)."""

from soraflow.components.filter.filter import (
    THRESHOLDS_256,
    THRESHOLDS_768,
    FilterError,
    FilterResult,
    FilterThresholds,
    as_thresholds,
    run_filter,
)
from soraflow.components.filter.scorers import (
    AestheticScorer,
    BlurScorer,
    Clip,
    DecodeCheck,
    JitterScorer,
    MotionScorer,
    OCRScorer,
    PerceptualHasher,
    ScoreResult,
    default_scorers,
    find_duplicates,
)
from soraflow.components.filter.validation import ValidationError, validate_table

__all__ = [
    "run_filter", "FilterError", "FilterThresholds", "FilterResult", "THRESHOLDS_256", "THRESHOLDS_768", "as_thresholds",
    "validate_table", "ValidationError", "Clip", "ScoreResult", "DecodeCheck", "MotionScorer",
    "BlurScorer", "JitterScorer", "PerceptualHasher", "AestheticScorer", "OCRScorer", "default_scorers",
    "find_duplicates",
]
