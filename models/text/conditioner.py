"""T5 + CLIP text conditioning for the MMDiT (docs/models.md#mmdit-conditioning-inputs, #condition-dropout).

``TextConditioner.encode(prompts)`` -> ``{"txt": [B, L, 4096], "y_vec": [B, 768]}`` for the real encoders.
The null condition is the encoding of the empty prompt (``T5("")``, ``CLIP("")``), never zeros.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import Tensor

from .cache import EmbeddingCache
from .embedder import CLIPEmbedder, HFEmbedder, T5Embedder

__all__ = [
    "DROPOUT_P",
    "TextConditioner",
    "extend_null_txt",
    "dropout_tensor",
    "dropout_condition",
]

#: per-condition drop probability, sqrt(0.1): T5 and CLIP are dropped independently, both ~10%.
DROPOUT_P = math.sqrt(0.1)  # 0.31622776601683794


def extend_null_txt(null_txt: Tensor, length: int) -> Tensor:
    """Extend a null T5 embedding ``[N, L0, D]`` to ``length`` tokens by repeating its last token
    (used when sequence-parallel padding made the text longer than 512, docs/models.md#condition-dropout)."""
    cur = null_txt.shape[1]
    if length == cur:
        return null_txt
    if length < cur:
        raise ValueError(f"cannot shorten the null text embedding from {cur} to {length} tokens")
    tail = null_txt[:, -1:].expand(null_txt.shape[0], length - cur, null_txt.shape[2])
    return torch.cat([null_txt, tail], dim=1)


def _draw(batch: int, p: float, generator: torch.Generator | None, device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(batch, generator=generator, device=gdev).to(device) < p


def dropout_tensor(x: Tensor, null: Tensor, p: float = DROPOUT_P,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Replace each row of ``x`` by ``null`` (broadcast over the batch) with probability ``p``.
    Returns ``(new_x, dropped)`` with ``dropped`` a bool ``[B]``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    dropped = _draw(x.shape[0], p, generator, x.device)
    null = null.to(device=x.device, dtype=x.dtype)
    if null.shape[0] not in (1, x.shape[0]) or null.shape[1:] != x.shape[1:]:
        raise ValueError(f"null shape {tuple(null.shape)} does not match {tuple(x.shape)}")
    mask = dropped.view((-1,) + (1,) * (x.ndim - 1))
    return torch.where(mask, null, x), dropped


def dropout_condition(txt: Tensor, y_vec: Tensor, null_txt: Tensor, null_y_vec: Tensor,
                      p: float = DROPOUT_P, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Condition dropout for training (docs/models.md#condition-dropout).

    T5 features ``txt`` [B, L, D] are replaced by ``null_txt`` ([1 or B, L0, D], extended to L by
    repeating its last token) with probability ``p``; independently ``y_vec`` [B, Dc] is replaced by
    ``null_y_vec`` with the same ``p``. The T5 draw comes first, then the CLIP draw, both from
    ``generator``. Returns ``dict(txt, y_vec, txt_dropped, y_dropped)``.
    """
    null_txt = extend_null_txt(null_txt, txt.shape[1])
    new_txt, txt_dropped = dropout_tensor(txt, null_txt, p, generator)
    new_y, y_dropped = dropout_tensor(y_vec, null_y_vec, p, generator)
    return {"txt": new_txt, "y_vec": new_y, "txt_dropped": txt_dropped, "y_dropped": y_dropped}


class TextConditioner:
    """Bundle of the T5 embedder (``txt``) and the CLIP embedder (``y_vec``).

    ``encode(prompts, added_tokens=0, seq_align=1)``: T5 ids get extra pad tokens so that
    ``(added_tokens + L) % seq_align == 0`` (sequence parallelism; ``added_tokens`` = image tokens).
    ``null(batch_size=1, length=None)``: encoding of ``""``, T5 part extended to ``length`` by
    repeating its last token.
    """

    def __init__(self, t5: HFEmbedder, clip: HFEmbedder):
        if t5.kind != "t5" or clip.kind != "clip":
            raise ValueError("TextConditioner(t5, clip) needs a T5 embedder then a CLIP embedder")
        self.t5 = t5
        self.clip = clip
        self._null: dict[str, Tensor] | None = None

    @classmethod
    def from_pretrained(
        cls,
        t5_path: str | os.PathLike,
        clip_path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        t5_max_length: int = 512,
        clip_max_length: int = 77,
        cache_dir: str | os.PathLike | None = None,
        cache_size: int = 128,
        use_cache: bool = True,
    ) -> "TextConditioner":
        cache = EmbeddingCache(max_items=cache_size, cache_dir=cache_dir) if use_cache else None
        t5 = T5Embedder(t5_path, max_length=t5_max_length, dtype=dtype, device=device, cache=cache)
        clip = CLIPEmbedder(clip_path, max_length=clip_max_length, dtype=dtype, device=device, cache=cache)
        return cls(t5, clip)

    @property
    def txt_dim(self) -> int:
        return self.t5.output_dim

    @property
    def vec_dim(self) -> int:
        return self.clip.output_dim

    @property
    def cache(self) -> EmbeddingCache | None:
        return self.t5.cache

    def text_length(self, added_tokens: int = 0, seq_align: int = 1) -> int:
        from .embedder import aligned_length

        return aligned_length(self.t5.max_length, added_tokens, seq_align)

    def encode(self, prompts: Sequence[str] | str, added_tokens: int = 0, seq_align: int = 1) -> dict[str, Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        return {
            "txt": self.t5(prompts, added_tokens=added_tokens, seq_align=seq_align),
            "y_vec": self.clip(prompts),
        }

    __call__ = encode

    def null(self, batch_size: int = 1, length: int | None = None) -> dict[str, Tensor]:
        """``{"txt": T5("") [B, length or 512, D], "y_vec": CLIP("") [B, Dc]}`` (computed once)."""
        if self._null is None:
            self._null = self.encode([""])
        txt = self._null["txt"]
        if length is not None:
            txt = extend_null_txt(txt, length)
        return {
            "txt": txt.expand(batch_size, -1, -1).clone(),
            "y_vec": self._null["y_vec"].expand(batch_size, -1).clone(),
        }

    def dropout(self, cond: dict[str, Tensor], p: float = DROPOUT_P,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Apply :func:`dropout_condition` to an ``encode`` result with this conditioner's null embeddings."""
        null = self.null()
        return dropout_condition(cond["txt"], cond["y_vec"], null["txt"], null["y_vec"], p, generator)
