"""Tests for models/text: T5/CLIP embedders, conditioner, cache, captions, dropout, tiny encoders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from soraflow.models.text import (
    DROPOUT_P,
    CLIPEmbedder,
    EmbeddingCache,
    T5Embedder,
    TextConditioner,
    TextEncoderFilesError,
    dropout_condition,
    extend_null_txt,
    inference_caption,
    load_t5_tokenizer,
    make_cache_key,
    make_tiny_text_encoders,
    map_target_fps,
    training_caption,
)

PROMPT_A = "A quick brown fox jumps over the lazy dog. 24 FPS. 4 motion score."
PROMPT_B = "Aerial view of a city at night, cars moving on the bridge."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_text_encoders(tmp_path_factory.mktemp("tiny_text"))


@pytest.fixture(scope="module")
def t5(tiny):
    return T5Embedder(tiny["t5"], dtype=torch.float32)


@pytest.fixture(scope="module")
def clip(tiny):
    return CLIPEmbedder(tiny["clip"], dtype=torch.float32)


def _count_forwards(module):
    """Forward pre-hook recording the kwargs of every call of an HF module."""
    calls = []

    def hook(mod, args, kwargs):
        calls.append(dict(kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


# ------------------------------------------------------------------------------------------------
# tiny encoders
# ------------------------------------------------------------------------------------------------


def test_tiny_encoders_layout_and_determinism(tiny, tmp_path):
    from transformers import CLIPTextModel, T5EncoderModel

    for name in ("config.json", "model.safetensors", "tokenizer.json", "spiece.model"):
        assert (Path(tiny["t5"]) / name).is_file(), name
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"):
        assert (Path(tiny["clip"]) / name).is_file(), name
    t5m = T5EncoderModel.from_pretrained(tiny["t5"], local_files_only=True)
    clipm = CLIPTextModel.from_pretrained(tiny["clip"], local_files_only=True)
    assert t5m.config.d_model == 32 and tiny["t5_dim"] == 32
    assert clipm.config.hidden_size == 32 and clipm.config.max_position_embeddings == 77
    # same seed -> identical weights and tokenizers
    again = make_tiny_text_encoders(tmp_path / "again")
    t5m2 = T5EncoderModel.from_pretrained(again["t5"], local_files_only=True)
    for (k, v), (k2, v2) in zip(t5m.state_dict().items(), t5m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert (Path(again["clip"]) / "vocab.json").read_text() == (Path(tiny["clip"]) / "vocab.json").read_text()
    assert (Path(again["t5"]) / "spiece.model").read_bytes() == (Path(tiny["t5"]) / "spiece.model").read_bytes()
    # configurable output dim
    wide = make_tiny_text_encoders(tmp_path / "wide", t5_dim=48, clip_dim=16)
    assert T5Embedder(wide["t5"], dtype=torch.float32).output_dim == 48
    assert CLIPEmbedder(wide["clip"], dtype=torch.float32).output_dim == 16


def test_tiny_tokenizers_tokenize_words(t5, clip):
    toks = t5.tokenizer.convert_ids_to_tokens(t5.tokenizer("a quick cat")["input_ids"])
    assert toks == ["▁a", "▁quick", "▁cat", "</s>"]
    ctoks = clip.tokenizer.convert_ids_to_tokens(clip.tokenizer("A quick cat")["input_ids"])
    assert ctoks == ["<|startoftext|>", "a</w>", "quick</w>", "cat</w>", "<|endoftext|>"]


# ------------------------------------------------------------------------------------------------
# T5
# ------------------------------------------------------------------------------------------------


def test_t5_padding_512_and_no_attention_mask(t5):
    calls, handle = _count_forwards(t5.hf_module)
    try:
        out = t5([PROMPT_A, PROMPT_B])
    finally:
        handle.remove()
    assert out.shape == (2, 512, 32) and out.dtype == torch.float32
    assert len(calls) == 1 and calls[0].get("attention_mask") is None

    enc = t5.tokenizer([PROMPT_A, PROMPT_B], padding="max_length", max_length=512, truncation=True,
                       return_tensors="pt")
    ids = enc["input_ids"]
    assert torch.equal(t5.tokenize([PROMPT_A, PROMPT_B]), ids)
    n_real = int(enc["attention_mask"][0].sum())
    assert n_real < 40 and (ids[0, n_real:] == t5.pad_token_id).all() and ids[0, n_real - 1] == 1  # </s>
    with torch.no_grad():
        ref_nomask = t5.hf_module(input_ids=ids).last_hidden_state
        ref_mask = t5.hf_module(input_ids=ids, attention_mask=enc["attention_mask"]).last_hidden_state
    assert torch.equal(out, ref_nomask)
    assert not torch.allclose(out, ref_mask, atol=1e-4)  # a masked encoder would give different features
    # pad positions carry real, prompt-dependent features
    pad_a = out[0, n_real:]
    assert pad_a.abs().sum(dim=-1).gt(0).all() and pad_a.abs().mean() > 1e-3
    assert not torch.allclose(out[0, 200], out[1, 200], atol=1e-5)


def test_t5_truncates_long_prompt(t5):
    long_prompt = " ".join(["cat"] * 700)
    ids = t5.tokenize([long_prompt])
    assert ids.shape == (1, 512) and ids[0, -1] == 1  # truncated, still ends with </s>


def test_default_dtype_is_bf16(tiny):
    emb = T5Embedder(tiny["t5"])
    assert emb.dtype == torch.bfloat16
    assert next(emb.hf_module.parameters()).dtype == torch.bfloat16
    out = emb(["a cat"])
    assert out.dtype == torch.bfloat16 and out.shape == (1, 512, 32)
    assert CLIPEmbedder(tiny["clip"])(["a cat"]).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# CLIP
# ------------------------------------------------------------------------------------------------


def test_clip_pooled_output_equals_hf_pooler(clip):
    calls, handle = _count_forwards(clip.hf_module)
    try:
        out = clip([PROMPT_A, PROMPT_B, ""])
    finally:
        handle.remove()
    assert out.shape == (3, 32)
    assert len(calls) == 1 and calls[0].get("attention_mask") is None
    ids = clip.tokenize([PROMPT_A, PROMPT_B, ""])
    assert ids.shape == (3, 77)
    eos = clip.tokenizer.eos_token_id
    assert (ids[2, 1:] == eos).all()  # "" -> <bos> then <eos>/pad (pad == eos for CLIP)
    with torch.no_grad():
        hf = clip.hf_module(input_ids=ids)
    assert torch.equal(out, hf.pooler_output)
    # pooled = final-LN hidden state at the first EOS (not a projection)
    first_eos = (ids == eos).int().argmax(dim=-1)
    assert torch.equal(out, hf.last_hidden_state[torch.arange(3), first_eos])


def test_clip_from_full_clipmodel_directory(tiny, tmp_path):
    """openai/clip-vit-large-patch14 ships a full CLIPModel config; the text tower must load from it."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    text_cfg = CLIPTextConfig.from_pretrained(tiny["clip"], local_files_only=True)
    cfg = CLIPConfig(
        text_config=text_cfg.to_dict(),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    torch.manual_seed(0)
    full = CLIPModel(cfg).eval()
    d = tmp_path / "clip_full"
    full.save_pretrained(str(d))
    for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(Path(tiny["clip"]) / n, d / n)
    emb = CLIPEmbedder(d, dtype=torch.float32)
    ids = emb.tokenize([PROMPT_A])
    with torch.no_grad():
        ref = full.text_model(input_ids=ids).pooler_output
    assert torch.equal(emb([PROMPT_A]), ref) and ref.shape == (1, 32)  # pooled, not the 16-d projection


# ------------------------------------------------------------------------------------------------
# conditioner: null, seq_align
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def conditioner(t5, clip):
    t5.cache = None
    clip.cache = None
    return TextConditioner(t5, clip)


def test_encode_and_null_is_empty_prompt(conditioner):
    out = conditioner.encode([PROMPT_A, PROMPT_B])
    assert out["txt"].shape == (2, 512, 32) and out["y_vec"].shape == (2, 32)
    null = conditioner.null()
    empty = conditioner.encode([""])
    assert torch.equal(null["txt"], empty["txt"]) and torch.equal(null["y_vec"], empty["y_vec"])
    assert null["txt"].abs().sum() > 0 and null["y_vec"].abs().sum() > 0  # never zeros
    null3 = conditioner.null(batch_size=3)
    assert null3["txt"].shape == (3, 512, 32) and torch.equal(null3["txt"][2], empty["txt"][0])
    # extension by repeating the last token
    ext = conditioner.null(length=520)["txt"]
    assert ext.shape == (1, 520, 32)
    assert torch.equal(ext[:, :512], empty["txt"])
    assert torch.equal(ext[0, 512:], empty["txt"][0, 511:512].expand(8, 32))


def test_seq_align_pads_t5_ids(conditioner):
    t5 = conditioner.t5
    ids = t5.tokenize([PROMPT_A], added_tokens=3, seq_align=8)
    assert ids.shape == (1, 517) and (3 + 517) % 8 == 0
    assert (ids[0, 512:] == t5.pad_token_id).all()
    assert conditioner.text_length(added_tokens=3, seq_align=8) == 517
    assert t5.tokenize([PROMPT_A], added_tokens=0, seq_align=8).shape == (1, 512)  # already aligned
    assert t5.tokenize([PROMPT_A], added_tokens=100, seq_align=7).shape[1] == 516  # (100+516) % 7 == 0
    out = conditioner.encode([PROMPT_A], added_tokens=3, seq_align=8)
    assert out["txt"].shape == (1, 517, 32) and out["y_vec"].shape == (1, 32)
    with torch.no_grad():
        ref = t5.hf_module(input_ids=ids).last_hidden_state
    assert torch.equal(out["txt"], ref)
    # extra pads are attended to: the first 512 positions differ from the unaligned encoding
    assert not torch.allclose(out["txt"][:, :512], conditioner.encode([PROMPT_A])["txt"], atol=1e-6)


def test_extend_null_rejects_shortening():
    with pytest.raises(ValueError, match="shorten"):
        extend_null_txt(torch.zeros(1, 10, 4), 5)


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


def test_memory_cache_encodes_once(tiny):
    tc = TextConditioner.from_pretrained(tiny["t5"], tiny["clip"], dtype=torch.float32, cache_size=16)
    t5_calls, h1 = _count_forwards(tc.t5.hf_module)
    clip_calls, h2 = _count_forwards(tc.clip.hf_module)
    try:
        first = tc.encode([PROMPT_A])
        second = tc.encode([PROMPT_A])
        assert len(t5_calls) == 1 and len(clip_calls) == 1
        assert torch.equal(first["txt"], second["txt"]) and torch.equal(first["y_vec"], second["y_vec"])
        # cached value equals a fresh, uncached encoding
        fresh_txt = tc.t5([PROMPT_A], use_cache=False)
        fresh_vec = tc.clip([PROMPT_A], use_cache=False)
        assert torch.equal(second["txt"], fresh_txt) and torch.equal(second["y_vec"], fresh_vec)
        # a repeated prompt inside one batch, and a partially cached batch: only misses are encoded
        n0 = tc.t5.encoded_prompts
        out = tc.encode([PROMPT_B, PROMPT_A, PROMPT_B])
        assert tc.t5.encoded_prompts - n0 == 1 and tc.clip.encoded_prompts - n0 == 1
        assert torch.equal(out["txt"][0], out["txt"][2]) and torch.equal(out["txt"][1], first["txt"][0])
        assert torch.allclose(out["txt"][0], tc.t5([PROMPT_B], use_cache=False)[0], atol=1e-5)
        # null is cached too
        calls_before = len(t5_calls)
        tc.null()
        tc.null()
        assert len(t5_calls) == calls_before + 1
        # a different seq_align length is a different cache entry
        assert tc.encode([PROMPT_A], added_tokens=3, seq_align=8)["txt"].shape[1] == 517
        assert len(t5_calls) == calls_before + 2
    finally:
        h1.remove()
        h2.remove()


def test_disk_cache_survives_new_process_state(tiny, tmp_path):
    cache_dir = tmp_path / "emb"
    tc1 = TextConditioner.from_pretrained(tiny["t5"], tiny["clip"], dtype=torch.float32, cache_dir=cache_dir)
    first = tc1.encode([PROMPT_A, PROMPT_B])
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 4 and all(f.endswith(".safetensors") and not f.startswith(".") for f in files)

    tc2 = TextConditioner.from_pretrained(tiny["t5"], tiny["clip"], dtype=torch.float32, cache_dir=cache_dir)
    calls, h = _count_forwards(tc2.t5.hf_module)
    try:
        second = tc2.encode([PROMPT_A, PROMPT_B])
    finally:
        h.remove()
    assert calls == [] and tc2.cache.disk_hits == 4
    assert torch.equal(first["txt"], second["txt"]) and torch.equal(first["y_vec"], second["y_vec"])

    # a corrupted file is a miss and gets rewritten
    victim = cache_dir / files[0]
    victim.write_bytes(b"not a safetensors file")
    tc3 = TextConditioner.from_pretrained(tiny["t5"], tiny["clip"], dtype=torch.float32, cache_dir=cache_dir)
    third = tc3.encode([PROMPT_A, PROMPT_B])
    assert tc3.t5.encoder_calls + tc3.clip.encoder_calls == 1
    assert torch.equal(third["txt"], first["txt"]) and torch.equal(third["y_vec"], first["y_vec"])

    # bf16 uses different keys (dtype is part of the key)
    tc4 = TextConditioner.from_pretrained(tiny["t5"], tiny["clip"], dtype=torch.bfloat16, cache_dir=cache_dir)
    tc4.encode([PROMPT_A])
    assert tc4.t5.encoder_calls == 1 and len(list(cache_dir.iterdir())) == 6


def test_cache_key_components():
    base = make_cache_key("fp", torch.bfloat16, 512, "a cat", length=512)
    assert base == make_cache_key("fp", torch.bfloat16, 512, "a cat", length=512)
    assert len({
        base,
        make_cache_key("fp2", torch.bfloat16, 512, "a cat", length=512),
        make_cache_key("fp", torch.float32, 512, "a cat", length=512),
        make_cache_key("fp", torch.bfloat16, 300, "a cat", length=512),
        make_cache_key("fp", torch.bfloat16, 512, "a cat.", length=512),
        make_cache_key("fp", torch.bfloat16, 512, "a cat", length=520),
    }) == 6


def test_cache_lru_and_atomic_write(tmp_path, monkeypatch):
    c = EmbeddingCache(max_items=2)
    for k in "abc":
        c.put(k, torch.full((2,), float(ord(k))))
    assert c.get("a") is None and c.get("b") is not None and len(c) == 2
    c.put("d", torch.zeros(1))  # "c" is now least recently used ("b" was just read)
    assert c.get("c") is None and c.get("b") is not None

    disk = EmbeddingCache(max_items=0, cache_dir=tmp_path)
    disk.put("k1", torch.arange(4.0))
    assert torch.equal(disk.get("k1"), torch.arange(4.0)) and disk.disk_hits == 1

    import safetensors.torch as st

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", failing_save)
    with pytest.raises(OSError):
        disk.put("k2", torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.safetensors"]  # no half-written file left


# ------------------------------------------------------------------------------------------------
# errors and tokenizer fallback
# ------------------------------------------------------------------------------------------------


def test_missing_directory_and_files_errors(tiny, tmp_path):
    missing = tmp_path / "no_such_t5"
    with pytest.raises(TextEncoderFilesError, match="directory not found") as ei:
        T5Embedder(missing)
    assert str(missing) in str(ei.value) and "config.json" in str(ei.value)
    with pytest.raises(FileNotFoundError, match="CLIP"):
        CLIPEmbedder(tmp_path / "no_such_clip")

    no_cfg = tmp_path / "no_cfg"
    shutil.copytree(tiny["t5"], no_cfg)
    (no_cfg / "config.json").unlink()
    with pytest.raises(TextEncoderFilesError, match="no config.json") as ei:
        T5Embedder(no_cfg)
    assert str(no_cfg) in str(ei.value)

    no_w = tmp_path / "no_weights"
    shutil.copytree(tiny["clip"], no_w)
    (no_w / "model.safetensors").unlink()
    with pytest.raises(TextEncoderFilesError, match="no model weights"):
        CLIPEmbedder(no_w)

    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny["clip"], no_tok)
    for n in ("tokenizer.json", "vocab.json"):
        (no_tok / n).unlink()
    with pytest.raises(TextEncoderFilesError, match="tokenizer files missing") as ei:
        CLIPEmbedder(no_tok)
    assert "vocab.json + merges.txt" in str(ei.value) and str(no_tok) in str(ei.value)


def test_t5_tokenizer_from_spiece_only(tiny, tmp_path):
    """A directory with only spiece.model (as google/t5-v1_1-xxl ships) loads without protobuf."""
    d = tmp_path / "spiece_only"
    d.mkdir()
    shutil.copy(f"{tiny['t5']}/spiece.model", d / "spiece.model")
    tok = load_t5_tokenizer(d)
    ref = load_t5_tokenizer(tiny["t5"])
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(d / "spiece.model"))
    for text in [PROMPT_A, PROMPT_B, "", "ｆｕｌｌ width and   spaces  ", "  lead, trail . "]:
        # ground truth = sentencepiece itself + </s> (what the slow legacy T5Tokenizer produces)
        assert tok(text)["input_ids"] == sp.encode(text) + [1]
        assert ref(text)["input_ids"] == sp.encode(text) + [1]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1  # T5 sentinel order


# ------------------------------------------------------------------------------------------------
# captions (docs/models.md#motion-score-and-fps-in-captions)
# ------------------------------------------------------------------------------------------------


def test_map_target_fps_worked_values():
    assert map_target_fps(30, 24) == (15, 2)
    assert map_target_fps(25, 24) == (12, 2)
    assert map_target_fps(60, 24) == (20, 3)
    assert map_target_fps(24, 24) == (24, 1)
    assert map_target_fps(48, 24) == (24, 2)
    assert map_target_fps(29.97, 24) == (14, 2)
    assert map_target_fps(23.976, 24) == (23.976, 1)
    assert map_target_fps(15, 24) == (15, 1)


def test_training_caption():
    assert training_caption("A cat sleeps.", 30, 4.6) == "A cat sleeps. 15 FPS, 5 motion score."
    assert training_caption("A cat sleeps.", 24, 5.2) == "A cat sleeps. 24 FPS, 5 motion score."
    assert training_caption("A cat sleeps.", 60, 12.0) == "A cat sleeps. 20 FPS, 12 motion score."
    assert training_caption("A cat sleeps.", 25, 0.4) == "A cat sleeps. 12 FPS, 0 motion score."
    assert training_caption("A cat sleeps.", 23.976, 3) == "A cat sleeps. 23.976 FPS, 3 motion score."
    assert training_caption("x", 15.0, 2.5) == "x 15.0 FPS, 3 motion score."  # float kept; int(v + 0.5)
    assert training_caption("x", float("nan"), 2.5) == "x 3 motion score."  # released: motion without fps
    assert training_caption("x", 0, None) == "x"


def test_inference_caption():
    assert inference_caption("A cat sleeps", 24, 4) == "A cat sleeps. 24 FPS. 4 motion score."
    assert inference_caption("A cat sleeps.", 24, 4) == "A cat sleeps. 24 FPS. 4 motion score."
    assert inference_caption("  A cat sleeps.  ", 16, "7") == "A cat sleeps. 16 FPS. 7 motion score."
    assert inference_caption("A cat. 24 FPS.", 24, 4) == "A cat. 24 FPS. 4 motion score."  # fps not doubled
    assert inference_caption("A cat", fps=None, motion_score=None) == "A cat"
    with pytest.raises(ValueError):
        inference_caption("A cat", 24, "dynamic")


# ------------------------------------------------------------------------------------------------
# condition dropout (docs/models.md#condition-dropout)
# ------------------------------------------------------------------------------------------------


def test_dropout_statistics_and_exact_null_rows():
    assert DROPOUT_P == pytest.approx(0.31622777, abs=1e-8)
    B, L, D = 40000, 6, 3
    g = torch.Generator().manual_seed(1234)
    txt = torch.randn(B, L, D, generator=g) + 10.0
    vec = torch.randn(B, 5, generator=g) + 10.0
    null_txt = torch.randn(1, 4, D, generator=g)  # shorter: extended by repeating the last token
    null_vec = torch.randn(1, 5, generator=g)

    out = dropout_condition(txt, vec, null_txt, null_vec, generator=torch.Generator().manual_seed(0))
    dt, dy = out["txt_dropped"], out["y_dropped"]
    # Binomial std for B=40000: ~0.0023 (p=0.316), ~0.0015 (p=0.1); tolerance 0.012 / 0.008 is > 5 sigma
    assert abs(dt.float().mean().item() - DROPOUT_P) < 0.012
    assert abs(dy.float().mean().item() - DROPOUT_P) < 0.012
    assert abs((dt & dy).float().mean().item() - 0.1) < 0.008
    assert abs((dt & ~dy).float().mean().item() - DROPOUT_P * (1 - DROPOUT_P)) < 0.01

    ext = extend_null_txt(null_txt, L)[0]
    assert torch.equal(ext[4], null_txt[0, 3]) and torch.equal(ext[5], null_txt[0, 3])
    assert torch.equal(out["txt"][dt], ext.expand(int(dt.sum()), L, D))
    assert torch.equal(out["txt"][~dt], txt[~dt])
    assert torch.equal(out["y_vec"][dy], null_vec.expand(int(dy.sum()), 5))
    assert torch.equal(out["y_vec"][~dy], vec[~dy])

    again = dropout_condition(txt, vec, null_txt, null_vec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["txt_dropped"], dt) and torch.equal(again["y_dropped"], dy)

    none = dropout_condition(txt[:100], vec[:100], null_txt, null_vec, p=0.0)
    assert not none["txt_dropped"].any() and torch.equal(none["txt"], txt[:100])
    every = dropout_condition(txt[:100], vec[:100], null_txt, null_vec, p=1.0)
    assert every["y_dropped"].all()


def test_conditioner_dropout_uses_real_null(conditioner):
    cond = conditioner.encode([PROMPT_A, PROMPT_B])
    out = conditioner.dropout(cond, p=1.0)
    null = conditioner.encode([""])
    assert torch.equal(out["txt"], null["txt"].expand(2, -1, -1))
    assert torch.equal(out["y_vec"], null["y_vec"].expand(2, -1))
