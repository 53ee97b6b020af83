"""Tiny random T5 and CLIP text encoders with working tokenizers, built locally (no downloads).

``make_tiny_text_encoders(directory)`` writes ``directory/t5`` and ``directory/clip`` in the same
layout ``from_pretrained(dir, local_files_only=True)`` reads for the real models, so tests and demos
exercise the real loading path. Deterministic: fixed seeds, single-threaded tokenizer training.

* T5 tokenizer: a SentencePiece Unigram model trained on a built-in English word list
  (``spiece.model``), converted to the transformers T5 tokenizer and saved (``tokenizer.json``).
* CLIP tokenizer: a byte-level BPE with ``</w>`` word suffix trained with the ``tokenizers`` library
  under CLIP's normaliser/pre-tokeniser, wrapped as ``CLIPTokenizer`` (``tokenizer.json`` plus
  ``vocab.json``/``merges.txt``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

__all__ = ["make_tiny_text_encoders", "TINY_WORDS"]

TINY_WORDS = (
    "a an the and of in on at to with from over under into through near behind above below "
    "is are was were be being has have it its this that these those there here while as by "
    "cat cats dog dogs bird birds fish horse cow sheep man men woman women child children people person "
    "girl boy baby crowd car cars bus train plane boat bike truck road street city town village house "
    "building bridge tower river lake sea ocean beach sand wave waves water rain snow sky cloud clouds "
    "sun moon star stars light night day morning evening sunset sunrise forest tree trees grass flower "
    "flowers field mountain mountains hill stone rock fire smoke wind storm ice garden park room kitchen "
    "table chair window door wall floor red blue green yellow white black orange purple pink brown gray "
    "golden bright dark small large big tiny tall short long old young happy slow fast quick lazy calm "
    "walks walking runs running jumps jumping flies flying swims swimming dances dancing sits sitting "
    "stands standing looks looking moves moving plays playing drives driving falls falling rises "
    "camera shot view close wide aerial slowly quickly gently scene video clip frame motion score FPS "
    "zoom pan tilt static dynamic cinematic realistic style detailed background foreground left right "
    "A The In On An It This There Camera Video Scene"
).split()

_EXTRA_LINES = [
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 23.976 24 25 30 60",
    "24 FPS, 5 motion score. 12 FPS. 4 motion score. 15 FPS, 1 motion score.",
    ", . ! ? ' \" - : ; ( ) / & %",
]


def _corpus() -> list[str]:
    words = list(TINY_WORDS)
    n = len(words)
    lines = []
    for step in (1, 3, 7, 11):
        lines.append(" ".join(words[(i * step) % n] for i in range(n)))
    for i in range(0, n, 8):
        lines.append(" ".join(words[i : i + 8]) + ".")
    return lines + _EXTRA_LINES


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------


def _build_t5_tokenizer(out: Path):
    import sentencepiece as spm

    from .embedder import t5_tokenizer_from_spiece

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus() * 3),
        model_writer=buf,
        vocab_size=400,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5 layout
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    (out / "spiece.model").write_bytes(buf.getvalue())
    tok = t5_tokenizer_from_spiece(out / "spiece.model")
    tok.save_pretrained(str(out))
    return tok


_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _train_bpe_merges(tk, lines: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE training (``tokenizers``' trainer breaks count ties arbitrarily): words come
    from ``tk``'s CLIP normaliser + pre-tokeniser, end with ``</w>``; each step merges the most frequent
    adjacent pair, ties broken by the lexicographically smallest pair."""
    from collections import Counter

    counts: Counter = Counter()
    for line in lines:
        for word, _ in tk.pre_tokenizer.pre_tokenize_str(tk.normalizer.normalize_str(line)):
            counts[word] += 1
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in sorted(counts.items())}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for sym, c in words.items():
            for pair in zip(sym, sym[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda pr: (-pairs[pr], pr))
        merges.append(best)
        new_words = {}
        for sym, c in words.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def _build_clip_tokenizer(out: Path):
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import CLIPTokenizer

    tk = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tk.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _train_bpe_merges(tk, _corpus(), num_merges=600)
    # CLIP layout: every byte symbol alone and with "</w>", then one entry per merge, specials last.
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)

    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(str(out))
    # the files the slow (transformers 4.x) CLIPTokenizer reads
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return tok


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------


def make_tiny_text_encoders(
    directory: str | os.PathLike,
    t5_dim: int = 32,
    clip_dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> dict:
    """Write a tiny random T5 encoder (``d_model=t5_dim``) and a tiny CLIP text model
    (``hidden_size=clip_dim``, 77 positions) with tokenizers into ``directory/t5`` and ``directory/clip``.

    Returns ``{"t5": path, "clip": path, "t5_dim": t5_dim, "clip_dim": clip_dim}`` (paths as str).
    The DiT's tiny config should use ``context_in_dim = t5_dim`` and ``vec_in_dim = clip_dim``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .embedder import quiet_progress

    if t5_dim % num_heads or clip_dim % num_heads:
        raise ValueError(f"t5_dim ({t5_dim}) and clip_dim ({clip_dim}) must be divisible by num_heads ({num_heads})")
    root = Path(directory)
    t5_dir, clip_dir = root / "t5", root / "clip"
    t5_dir.mkdir(parents=True, exist_ok=True)
    clip_dir.mkdir(parents=True, exist_ok=True)

    t5_tok = _build_t5_tokenizer(t5_dir)
    clip_tok = _build_clip_tokenizer(clip_dir)

    t5_cfg = T5Config(
        vocab_size=len(t5_tok),
        d_model=t5_dim,
        d_kv=t5_dim // num_heads,
        d_ff=2 * t5_dim,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # as t5-v1_1
        tie_word_embeddings=False,
        pad_token_id=t5_tok.pad_token_id,
        eos_token_id=t5_tok.eos_token_id,
        decoder_start_token_id=t5_tok.pad_token_id,
        use_cache=False,
    )
    clip_cfg = CLIPTextConfig(
        vocab_size=len(clip_tok),
        hidden_size=clip_dim,
        intermediate_size=2 * clip_dim,
        projection_dim=clip_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t5 = T5EncoderModel(t5_cfg).eval()
        torch.manual_seed(seed + 1)
        clip = CLIPTextModel(clip_cfg).eval()
    with quiet_progress():
        t5.save_pretrained(str(t5_dir), safe_serialization=True)
        clip.save_pretrained(str(clip_dir), safe_serialization=True)
    return {"t5": str(t5_dir), "clip": str(clip_dir), "t5_dim": t5_dim, "clip_dim": clip_dim}


def soraflow_cache_dir() -> Path:
    """Where generated assets are cached: $SORAFLOW_CACHE, else ~/.cache/soraflow."""
    return Path(os.environ.get("SORAFLOW_CACHE", Path.home() / ".cache" / "soraflow")).expanduser()


def tiny_text_encoder_dirs() -> tuple[Path, Path]:
    """The tiny random T5/CLIP (deterministic), written once into the cache folder: (t5_dir, clip_dir)."""
    root = soraflow_cache_dir() / "tiny-text-encoders"
    t5_dir, clip_dir = root / "t5", root / "clip"
    if not ((t5_dir / "config.json").exists() and (clip_dir / "config.json").exists()):
        make_tiny_text_encoders(root)
    return t5_dir, clip_dir
