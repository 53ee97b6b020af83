"""Sequence parallelism (training/parallel/sequence.py, installed by training/parallel/mmdit.py) on 2 CPU processes over gloo, checked in fp64 against the
single-process computation: attention outputs and dq/dk/dv, split/gather gradient scaling, and the whole tiny
MMDiT (outputs and parameter gradients, with and without padding, with activation checkpointing)."""

import functools
import logging
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from soraflow.models.mmdit import MMDiT, get_config
from soraflow.models.mmdit import attention as attn_mod
from soraflow.training.parallel import ring_kernels as rk
from soraflow.training.parallel.mmdit import apply_activation_checkpointing, apply_compile, is_sequence_parallel
from soraflow.training.parallel.mmdit import apply_sequence_parallel as sequence_parallel
from soraflow.training.parallel.sequence import (
    gather_from_sp,
    ring_attention,
    split_for_sp,
    ulysses_attention,
)

WORLD = 2
TOL = dict(rtol=1e-9, atol=1e-10)  # fp64 throughout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, *args):
    port = _free_port()
    mp.spawn(_entry, args=(fn, port, args), nprocs=WORLD, join=True)


def _entry(rank, fn, port, args):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    except Exception:  # make the failing rank's traceback visible in pytest's report
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------


def _reference_attention(q, k, v, kv_len):
    """Plain softmax attention on the full sequence, keys >= kv_len dropped: [B, H, L, D] -> [B, L, H*D]."""
    b, h, l, d = q.shape
    k, v = k[:, :, :kv_len], v[:, :, :kv_len]
    p = ((q @ k.transpose(-2, -1)) / d**0.5).softmax(-1)
    return (p @ v).transpose(1, 2).reshape(b, l, h * d)


def _low_precision_ring_check(rank):
    """Ring (fused per-block kernel) vs one SDPA call on the whole sequence, both in fp32 or bf16, both measured
    against fp64: the ring's max error may be at most 2x SDPA's + a floor (1e-5 fp32, 1e-2 bf16; O(1) values).
    Padding: the last 3 keys (rank 1's block partial)."""
    B, H, L, D = 1, 4, 64, 32
    lc, kv_len = L // WORLD, L - 3
    sl = slice(rank * lc, (rank + 1) * lc)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.randn(B, L, H * D, generator=g, dtype=torch.float64)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = _reference_attention(*ref_in, kv_len)
    (ref * w).sum().backward()
    for dtype, floor in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        full = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        sdpa = attn_mod.attention(full[0], full[1][:, :, :kv_len], full[2][:, :, :kv_len])
        (sdpa.double() * w).sum().backward()
        loc = [t.detach()[:, :, sl].clone().requires_grad_() for t in full]
        out = ring_attention(*loc, group=None, kv_len=kv_len)
        assert out.dtype == dtype
        (out.double() * w[:, sl]).sum().backward()
        pairs = [("out", out, sdpa[:, sl], ref[:, sl])] + [
            (f"d{n}", a.grad, s.grad[:, :, sl], r.grad[:, :, sl]) for n, a, s, r in zip("qkv", loc, full, ref_in)
        ]
        for name, got, base, exact in pairs:
            err = (got.double() - exact).abs().max().item()
            base_err = (base.double() - exact).abs().max().item()
            assert err <= 2 * base_err + floor, f"ring {name} {dtype}: err {err:.3g} vs SDPA {base_err:.3g}"


def _ops_worker(rank):
    torch.manual_seed(0)
    log_records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: log_records.append(record.getMessage())
    logging.getLogger(rk.__name__).addHandler(handler)
    logging.getLogger(rk.__name__).setLevel(logging.DEBUG)
    B, H, L, D = 2, 4, 12, 8
    lc = L // WORLD
    sl = slice(rank * lc, (rank + 1) * lc)
    fns = (
        ("ulysses", ulysses_attention),
        ("ring", ring_attention),  # fused per-block kernel (cpu-flash)
        ("ring-matmul", functools.partial(ring_attention, kernel="matmul")),
    )
    # L - 1: the last token is padding (masked as a key); 5: rank 0's block partial, rank 1's all padding.
    for kv_len in (L, L - 1, 5):
        q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64) for _ in range(3))
        w = torch.randn(B, L, H * D, dtype=torch.float64)  # loss weights, same on every rank
        ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = _reference_attention(*ref_in, kv_len)
        (ref * w).sum().backward()
        for name, fn in fns:
            loc = [t[:, :, sl].clone().requires_grad_() for t in (q, k, v)]
            out = fn(*loc, group=None, kv_len=None if kv_len == L else kv_len)
            torch.testing.assert_close(out, ref[:, sl], **TOL, msg=f"{name} output (kv_len={kv_len})")
            (out * w[:, sl]).sum().backward()
            for g, r, what in zip((t.grad for t in loc), (t.grad for t in ref_in), "qkv"):
                torch.testing.assert_close(g, r[:, :, sl], **TOL, msg=f"{name} d{what} (kv_len={kv_len})")

    # The ring ran the fused CPU kernel, and said so in the debug log.
    assert any("cpu-flash block kernel" in m for m in log_records), log_records

    # fp32 and bf16: the ring against one single-process SDPA call in the same dtype (and both against fp64).
    _low_precision_ring_check(rank)

    # Ulysses through the default kernel (SDPA) also matches.
    q, k, v = (torch.randn(B, H, lc, D, dtype=torch.float64) for _ in range(3))
    full = [torch.empty(B, H, L, D, dtype=torch.float64) for _ in range(3)]
    for f, t in zip(full, (q, k, v)):
        parts = [torch.empty_like(t) for _ in range(WORLD)]
        dist.all_gather(parts, t)
        f.copy_(torch.cat(parts, 2))
    torch.testing.assert_close(ulysses_attention(q, k, v), attn_mod.attention(*full)[:, sl], **TOL)

    # Heads not divisible by sp: a clear error.
    odd = torch.randn(1, 3, lc, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="divisible by the SP size"):
        ulysses_attention(odd, odd, odd)

    # split/gather: identical loss on every rank -> mean over ranks of the grads = single-process grads.
    x = torch.randn(B, L, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, L, 5, dtype=torch.float64)
    y = split_for_sp(x * 3.0, None, dim=1)
    assert y.shape == (B, lc, 5)
    z = gather_from_sp(y.sin(), None, dim=1)
    torch.testing.assert_close(z, (x * 3.0).sin(), **TOL)
    (z * w).sum().backward()
    # Every rank ends with the full input gradient (split backward all-gathers and scales by 1/sp).
    torch.testing.assert_close(x.grad, 3.0 * (x * 3.0).cos() * w, **TOL)


def test_attention_ops_match_full_attention():
    _launch(_ops_worker)


# ---------------------------------------------------------------------------------------------------------------


def _inputs(cfg, n_txt, n_img, seed, b=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ids = torch.stack(
        [torch.zeros(n_img), torch.arange(n_img) // 3, torch.arange(n_img) % 3], dim=-1
    ).expand(b, n_img, 3).to(torch.float64)
    return dict(
        img=r(b, n_img, cfg.in_channels), img_ids=ids, txt=r(b, n_txt, cfg.context_in_dim),
        txt_ids=torch.zeros(b, n_txt, 3, dtype=torch.float64),
        timesteps=torch.rand(b, generator=g, dtype=torch.float64),
        y_vec=r(b, cfg.vec_in_dim), cond=r(b, n_img, cfg.cond_channels),
    )


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _mmdit_worker(rank):
    torch.manual_seed(0)
    cfg = get_config("tiny", depth=1, depth_single_blocks=1)  # num_heads 4, head_dim 16
    model = MMDiT(cfg).double()
    with torch.no_grad():  # cond_in starts at zero; give it weights so its gradient path is exercised too
        model.cond_in.weight.normal_(0, 0.1)
    # (n_txt, n_img): divisible; padded by 1 (rank 1 gets no text); rank 0 gets no image tokens, padded.
    cases = [(4, 12), (6, 9), (9, 4)]
    for mode in ("ulysses", "ring"):
        for ci, (n_txt, n_img) in enumerate(cases):
            ckpt = ci == 1  # one case through activation checkpointing (recompute sees the SP attention)
            model.train(ckpt)
            apply_activation_checkpointing(model, (1, 1) if ckpt else None)
            inputs = _inputs(cfg, n_txt, n_img, seed=ci)
            w = torch.randn(2, n_img, cfg.out_channels, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

            model.zero_grad()
            ref = model(**inputs)
            (ref * w).sum().backward()
            ref_grads = _grads(model)

            model.zero_grad()
            with sequence_parallel(model, None, mode):
                out = model(**inputs)
            assert not is_sequence_parallel(model)  # the context restored the plain forward
            (out * w).sum().backward()  # after the context: checkpoint recompute still uses the SP attention
            what = f"{mode} n_txt={n_txt} n_img={n_img}"
            torch.testing.assert_close(out, ref, **TOL, msg=f"output, {what}")
            grads = _grads(model)
            assert set(grads) == set(ref_grads), what
            for name, g in grads.items():
                dist.all_reduce(g)
                g /= WORLD  # mean over the SP group = what DP averaging does
                torch.testing.assert_close(g, ref_grads[name], **TOL, msg=f"grad {name}, {what}")

    # Ulysses needs num_heads divisible by sp.
    odd = MMDiT(get_config("tiny", hidden_size=48, num_heads=3, depth=1, depth_single_blocks=1, axes_dim=(4, 6, 6)))
    with pytest.raises(ValueError, match="divisible by the SP size"):
        sequence_parallel(odd, None, "ulysses")
    sequence_parallel(odd, None, "ring").remove()  # ring has no such constraint
    assert not is_sequence_parallel(odd)


def test_mmdit_under_sp_matches_single_process():
    _launch(_mmdit_worker)


# ---------------------------------------------------------------------------------------------------------------


def _compiled_worker(rank, backend, cases):
    """SP with torch.compile'd blocks (`soraflow.training.parallel.mmdit.apply_compile`, as the GPU path does): the distributed attention
    runs eagerly behind a graph break, the rest of each block compiled. Output and mean parameter gradients vs
    the eager single-process model: fp64 exact-level with aot_eager (AOT autograd, no codegen); inductor's
    generated C++ reorders fp64 reductions, so 1e-6 relative there."""
    tol = TOL if backend == "aot_eager" else dict(rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    cfg = get_config("tiny", depth=1, depth_single_blocks=1)
    model = MMDiT(cfg).double()
    with torch.no_grad():
        model.cond_in.weight.normal_(0, 0.1)
    refs = {}
    for ci, (n_txt, n_img) in enumerate(cases):
        inputs = _inputs(cfg, n_txt, n_img, seed=ci)
        w = torch.randn(2, n_img, cfg.out_channels, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        model.zero_grad()
        ref = model(**inputs)
        (ref * w).sum().backward()
        refs[ci] = (inputs, w, ref.detach(), _grads(model))
    apply_compile(model, backend=backend)
    for mode in ("ring", "ulysses"):
        for ci, (n_txt, n_img) in enumerate(cases):
            inputs, w, ref, ref_grads = refs[ci]
            model.zero_grad()
            with sequence_parallel(model, None, mode):
                out = model(**inputs)
                (out * w).sum().backward()
            what = f"compiled ({backend}) {mode} n_txt={n_txt} n_img={n_img}"
            torch.testing.assert_close(out, ref, **tol, msg=f"output, {what}")
            for name, g in _grads(model).items():
                dist.all_reduce(g)
                g /= WORLD
                torch.testing.assert_close(g, ref_grads[name], **tol, msg=f"grad {name}, {what}")


def test_sp_with_compiled_blocks():
    # padded by 1 with rank 1 getting no text; rank 0 getting no image tokens (text/image boundary on rank 1)
    _launch(_compiled_worker, "aot_eager", [(6, 9), (9, 4)])


@pytest.mark.slow  # inductor compiles C++ for every block shape: about a minute on 2 cores
def test_sp_with_inductor_compiled_blocks():
    _launch(_compiled_worker, "inductor", [(6, 9)])
