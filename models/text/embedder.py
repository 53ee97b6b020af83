"""T5-XXL and CLIP-L text embedders loaded from local HuggingFace directories
(docs/models.md#mmdit-conditioning-inputs).

Behaviour mirrors the reference ``HFEmbedder``:

* T5: tokenizer with ``legacy=True``, ``max_length=512``, ``padding="max_length"``, truncation, optional
  extra pad tokens for sequence-parallel alignment (``seq_align``), and the encoder is called with
  ``attention_mask=None`` -- pad positions are attended to and their features are real DiT inputs.
  Output: ``last_hidden_state`` ``[B, L, d_model]`` (``[B, 512, 4096]`` for T5-XXL).
* CLIP: ``max_length=77`` padded to max length, ``attention_mask=None``, output ``pooler_output``
  ``[B, hidden]`` (the pooled EOS feature, *not* the projected ``text_embeds``).

Everything is ``local_files_only=True``; nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from .cache import EmbeddingCache, make_cache_key

__all__ = [
    "TextEncoderFilesError",
    "HFEmbedder",
    "T5Embedder",
    "CLIPEmbedder",
    "load_t5_tokenizer",
    "load_clip_tokenizer",
    "t5_tokenizer_from_spiece",
    "aligned_length",
]

Kind = Literal["t5", "clip"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_TOKENIZER_FILES = {
    "t5": (("tokenizer.json",), ("spiece.model",)),
    "clip": (("tokenizer.json",), ("vocab.json", "merges.txt")),
}
_TOKENIZER_FILES_TEXT = {
    "t5": "tokenizer.json or spiece.model",
    "clip": "tokenizer.json or vocab.json + merges.txt",
}
_NAMES = {"t5": "T5 text encoder", "clip": "CLIP text encoder"}


class TextEncoderFilesError(FileNotFoundError):
    """A text-encoder directory or one of the files it must contain is missing."""


# ---------------------------------------------------------------------------------------------
# file checks and fingerprint
# ---------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


def _tokenizer_files_present(kind: Kind, path: Path) -> bool:
    return any(all((path / f).is_file() for f in group) for group in _TOKENIZER_FILES[kind])


def check_encoder_dir(kind: Kind, path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> None:
    """Raise :class:`TextEncoderFilesError` naming the path and the expected files if anything is missing."""
    name = _NAMES[kind]
    p = Path(path)
    expected = (
        f"a local HuggingFace directory with config.json, model weights (*.safetensors or pytorch_model*.bin) "
        f"and tokenizer files ({_TOKENIZER_FILES_TEXT[kind]})"
    )
    if not p.exists():
        raise TextEncoderFilesError(f"{name} directory not found: {p} (expected {expected}; nothing is downloaded)")
    if not p.is_dir():
        raise TextEncoderFilesError(f"{name} path is not a directory: {p} (expected {expected})")
    if not (p / "config.json").is_file():
        raise TextEncoderFilesError(f"{name} directory {p} has no config.json (expected {expected})")
    if not _weight_files(p):
        raise TextEncoderFilesError(
            f"{name} directory {p} has no model weights (expected *.safetensors, pytorch_model*.bin or an index json)"
        )
    tp = Path(tokenizer_path) if tokenizer_path is not None else p
    if not tp.is_dir():
        raise TextEncoderFilesError(f"{name} tokenizer directory not found: {tp} (expected {_TOKENIZER_FILES_TEXT[kind]})")
    if not _tokenizer_files_present(kind, tp):
        raise TextEncoderFilesError(
            f"{name} tokenizer files missing in {tp}: expected {_TOKENIZER_FILES_TEXT[kind]}"
        )


def _file_digest(path: Path, full: bool) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    chunk = 1 << 20
    with open(path, "rb") as f:
        if full or size <= 2 * chunk:
            h.update(f.read())
        else:  # large weight files: head (safetensors header + first tensors) and tail
            h.update(f.read(chunk))
            f.seek(size - chunk)
            h.update(f.read(chunk))
    return h.hexdigest()


def encoder_fingerprint(kind: Kind, path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> str:
    """Content fingerprint of an encoder directory: config, tokenizer files, and weight files (name,
    size, head and tail bytes). Portable across machines (the absolute path is not part of it)."""
    p = Path(path)
    tp = Path(tokenizer_path) if tokenizer_path is not None else p
    h = hashlib.sha256()
    h.update(f"kind={kind};".encode())
    h.update(_file_digest(p / "config.json", full=True).encode())
    for name in ("tokenizer.json", "spiece.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (tp / name).is_file():
            h.update(_file_digest(tp / name, full=True).encode())
    for w in _weight_files(p):
        h.update(_file_digest(w, full=False).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return result, i


def _proto_fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(b, i)
        elif wire == 1:
            value, i = b[i : i + 8], i + 8
        elif wire == 5:
            value, i = b[i : i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(b, i)
            value, i = b[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _spiece_precompiled_charsmap(model_bytes: bytes) -> bytes | None:
    """``ModelProto.normalizer_spec(3).precompiled_charsmap(2)`` read without the protobuf package."""
    for field, wire, value in _proto_fields(model_bytes):
        if field == 3 and wire == 2:
            for f2, w2, v2 in _proto_fields(value):
                if f2 == 2 and w2 == 2:
                    return bytes(v2)
    return None


def t5_tokenizer_from_spiece(spiece_path: str | os.PathLike, extra_ids: int = 100):
    """Build a transformers (5.x, tokenizers-backed) ``T5Tokenizer`` from a SentencePiece ``spiece.model``
    without the protobuf package: pieces and scores come from the sentencepiece library, the NFKC
    normaliser charsmap from a minimal protobuf read. ``<extra_id_i>`` get the T5 ids (reverse order
    after the SentencePiece vocabulary: ``<extra_id_0>`` is the last id)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    data = Path(spiece_path).read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=data)
    vocab = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    return T5Tokenizer(
        vocab=vocab,
        extra_ids=extra_ids,
        _spm_precompiled_charsmap=_spiece_precompiled_charsmap(data),
        legacy=True,
    )


def load_t5_tokenizer(path: str | os.PathLike):
    """T5 tokenizer from a local directory, ``legacy=True`` (the reference setting), local files only."""
    import transformers

    p = Path(path)
    errors = []
    for cls_name in ("T5Tokenizer", "T5TokenizerFast"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            return cls.from_pretrained(str(p), legacy=True, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - try the next route, report all at the end
            errors.append(f"{cls_name}: {type(e).__name__}: {e}")
    if (p / "spiece.model").is_file():
        # transformers 5.x converts spiece.model through protobuf; build it directly instead.
        try:
            return t5_tokenizer_from_spiece(p / "spiece.model")
        except Exception as e:  # noqa: BLE001
            errors.append(f"spiece fallback: {type(e).__name__}: {e}")
    raise TextEncoderFilesError(
        f"could not load a T5 tokenizer from {p} (expected tokenizer.json or spiece.model):\n  " + "\n  ".join(errors)
    )


def load_clip_tokenizer(path: str | os.PathLike):
    """CLIP tokenizer from a local directory, local files only."""
    import transformers

    p = Path(path)
    errors = []
    for cls_name in ("CLIPTokenizer", "CLIPTokenizerFast"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            return cls.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{cls_name}: {type(e).__name__}: {e}")
    raise TextEncoderFilesError(
        f"could not load a CLIP tokenizer from {p} (expected tokenizer.json or vocab.json + merges.txt):\n  "
        + "\n  ".join(errors)
    )


@contextlib.contextmanager
def quiet_progress():
    """Temporarily disable transformers' progress bars (restored afterwards)."""
    try:
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
    except Exception:  # noqa: BLE001 - very old/new transformers without this API
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def aligned_length(length: int, added_tokens: int = 0, seq_align: int = 1) -> int:
    """Text length after appending pad tokens so that ``(added_tokens + length) % seq_align == 0``."""
    if seq_align < 1:
        raise ValueError(f"seq_align must be >= 1, got {seq_align}")
    rem = (added_tokens + length) % seq_align
    return length if rem == 0 else length + seq_align - rem


# ---------------------------------------------------------------------------------------------
# embedder
# ---------------------------------------------------------------------------------------------


class HFEmbedder(nn.Module):
    """One frozen HF text encoder (``kind="t5"`` or ``"clip"``) with tokenizer and optional cache.

    Args:
        path: local directory of the model (config.json + weights [+ tokenizer files]).
        kind: ``"t5"`` (T5EncoderModel, ``last_hidden_state``) or ``"clip"`` (CLIPTextModel, ``pooler_output``).
        max_length: tokenizer max length (default 512 for T5, 77 for CLIP).
        dtype: model dtype (default bf16).
        device: model device.
        tokenizer_path: tokenizer directory if it differs from ``path``.
        cache: an :class:`EmbeddingCache` (shared between embedders is fine; keys carry the encoder fingerprint).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: Kind,
        max_length: int | None = None,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        tokenizer_path: str | os.PathLike | None = None,
        cache: EmbeddingCache | None = None,
    ):
        super().__init__()
        if kind not in ("t5", "clip"):
            raise ValueError(f"kind must be 't5' or 'clip', got {kind!r}")
        check_encoder_dir(kind, path, tokenizer_path)
        from transformers import CLIPTextModel, T5EncoderModel

        self.kind: Kind = kind
        self.path = str(path)
        self.tokenizer_path = str(tokenizer_path) if tokenizer_path is not None else self.path
        self.is_clip = kind == "clip"
        self.max_length = int(max_length if max_length is not None else (77 if self.is_clip else 512))
        self.output_key = "pooler_output" if self.is_clip else "last_hidden_state"
        self.dtype = dtype
        self.cache = cache
        self.encoder_calls = 0  # number of HF forward passes issued by this embedder
        self.encoded_prompts = 0  # number of prompts actually run through the encoder

        if self.is_clip:
            self.tokenizer = load_clip_tokenizer(self.tokenizer_path)
            model_cls = CLIPTextModel
        else:
            self.tokenizer = load_t5_tokenizer(self.tokenizer_path)
            model_cls = T5EncoderModel
        with quiet_progress():
            self.hf_module = model_cls.from_pretrained(self.path, local_files_only=True, **_dtype_kwargs(dtype))
        self.hf_module = self.hf_module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.fingerprint = encoder_fingerprint(kind, self.path, self.tokenizer_path)

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf_module.parameters()).device

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def output_dim(self) -> int:
        cfg = self.hf_module.config
        return int(cfg.hidden_size if self.is_clip else cfg.d_model)

    # -- core ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], added_tokens: int = 0, seq_align: int = 1) -> Tensor:
        """Token ids ``[B, L]``: padded to ``max_length`` (truncating longer prompts), then extra pad
        tokens so that ``(added_tokens + L) % seq_align == 0``."""
        enc = self.tokenizer(
            list(prompts),
            truncation=True,
            max_length=self.max_length,
            return_length=False,
            return_overflowing_tokens=False,
            padding="max_length",
            return_tensors="pt",
        )
        ids = enc["input_ids"]
        target = aligned_length(ids.shape[1], added_tokens, seq_align)
        if target != ids.shape[1]:
            ids = nn.functional.pad(ids, (0, target - ids.shape[1]), value=self.pad_token_id)
        return ids

    @torch.no_grad()
    def encode_ids(self, input_ids: Tensor) -> Tensor:
        """Run the encoder on ids with **no attention mask**; returns ``last_hidden_state`` or ``pooler_output``."""
        self.encoder_calls += 1
        self.encoded_prompts += int(input_ids.shape[0])
        out = self.hf_module(
            input_ids=input_ids.to(self.device),
            attention_mask=None,
            output_hidden_states=False,
        )
        return out[self.output_key]

    def cache_key(self, prompt: str, length: int) -> str:
        return make_cache_key(self.fingerprint, self.dtype, self.max_length, prompt, length=length)

    def forward(self, prompts: Sequence[str] | str, added_tokens: int = 0, seq_align: int = 1,
                use_cache: bool = True) -> Tensor:
        """Encode prompts: T5 -> ``[B, L, d_model]``, CLIP -> ``[B, hidden]``. With a cache, each distinct
        (encoder, dtype, max_length, text length, prompt) is encoded once; misses are batched."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        if self.cache is None or not use_cache:
            return self.encode_ids(self.tokenize(prompts, added_tokens, seq_align))

        length = aligned_length(self.max_length, added_tokens, seq_align)
        keys = [self.cache_key(p, length) for p in prompts]
        found: dict[str, Tensor] = {}
        todo: list[str] = []
        todo_keys: list[str] = []
        for p, k in zip(prompts, keys):
            if k in found or k in todo_keys:
                continue
            t = self.cache.get(k)
            if t is None:
                todo.append(p)
                todo_keys.append(k)
            else:
                found[k] = t
        if todo:
            emb = self.encode_ids(self.tokenize(todo, added_tokens, seq_align))
            for i, k in enumerate(todo_keys):
                row = emb[i].detach().to("cpu").clone()
                self.cache.put(k, row, meta={"prompt": todo[i], "kind": self.kind})
                found[k] = row
        return torch.stack([found[k] for k in keys]).to(self.device)


class T5Embedder(HFEmbedder):
    """T5 encoder: ``max_length=512``, no attention mask, ``last_hidden_state`` ``[B, 512(+pad), d_model]``."""

    def __init__(self, path, max_length: int = 512, dtype: torch.dtype = torch.bfloat16, device="cpu",
                 tokenizer_path=None, cache: EmbeddingCache | None = None):
        super().__init__(path, "t5", max_length, dtype, device, tokenizer_path, cache)


class CLIPEmbedder(HFEmbedder):
    """CLIP text encoder: ``max_length=77``, ``pooler_output`` ``[B, hidden]`` (not projected)."""

    def __init__(self, path, max_length: int = 77, dtype: torch.dtype = torch.bfloat16, device="cpu",
                 tokenizer_path=None, cache: EmbeddingCache | None = None):
        super().__init__(path, "clip", max_length, dtype, device, tokenizer_path, cache)
