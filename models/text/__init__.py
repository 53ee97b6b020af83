"""Text conditioning: T5-XXL (``txt``) and CLIP-L pooled (``y_vec``) embedders, the embedding cache,
caption suffixes (FPS / motion score), condition dropout, and tiny local encoders for tests."""

from .cache import EmbeddingCache, make_cache_key
from .captions import (
    check_fps_added,
    ensure_sentence_ends_with_period,
    inference_caption,
    map_target_fps,
    training_caption,
)
from .conditioner import DROPOUT_P, TextConditioner, dropout_condition, dropout_tensor, extend_null_txt
from .embedder import (
    CLIPEmbedder,
    HFEmbedder,
    T5Embedder,
    TextEncoderFilesError,
    aligned_length,
    load_clip_tokenizer,
    load_t5_tokenizer,
    t5_tokenizer_from_spiece,
)
from .tiny import make_tiny_text_encoders

__all__ = [
    "EmbeddingCache",
    "make_cache_key",
    "check_fps_added",
    "ensure_sentence_ends_with_period",
    "inference_caption",
    "map_target_fps",
    "training_caption",
    "DROPOUT_P",
    "TextConditioner",
    "dropout_condition",
    "dropout_tensor",
    "extend_null_txt",
    "CLIPEmbedder",
    "HFEmbedder",
    "T5Embedder",
    "TextEncoderFilesError",
    "aligned_length",
    "load_clip_tokenizer",
    "load_t5_tokenizer",
    "t5_tokenizer_from_spiece",
    "make_tiny_text_encoders",
]
