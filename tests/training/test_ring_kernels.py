"""Ring attention's per-block kernels and LSE merge (training/parallel/ring_kernels.py), in one process: K/V split
into blocks, merged, and differentiated through the per-block fused backward with the global output and LSE,
checked against plain attention on the whole sequence (fp64 reference)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from soraflow.training.parallel import ring_kernels as rk


def _reference(q, k, v, kv_len):
    """fp64 softmax attention over the first kv_len keys."""
    q, k, v = (t.double() for t in (q, k, v))
    k, v = k[:, :, :kv_len], v[:, :, :kv_len]
    p = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1)
    return p @ v


def _run(fn, q, k, v, w):
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*ins)
    (out.double() * w).sum().backward()
    return out.detach(), [t.grad for t in ins]


def _inputs(dtype, b=2, h=3, lq=10, lk=13, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))
    w = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype), w


# kv_len 13: no padding; 11: last block partial; 6: with 3 blocks of 5, block 1 partial and block 2 all padding.
CASES = [(n_blocks, kv_len) for n_blocks in (1, 2, 3) for kv_len in (13, 11, 6)]


@pytest.mark.parametrize("kernel", ["cpu-flash", "matmul"])
@pytest.mark.parametrize("n_blocks,kv_len", CASES)
def test_blockwise_matches_full_attention_fp64(kernel, n_blocks, kv_len):
    q, k, v, w = _inputs(torch.float64)
    ref, ref_g = _run(lambda q, k, v: _reference(q, k, v, kv_len), q, k, v, w)
    out, g = _run(lambda q, k, v: rk.blockwise_attention(q, k, v, n_blocks, kv_len, kernel), q, k, v, w)
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out, ref, **tol)
    for a, r, name in zip(g, ref_g, "qkv"):
        torch.testing.assert_close(a, r, **tol, msg=f"d{name}")
    assert (g[1][:, :, kv_len:] == 0).all() and (g[2][:, :, kv_len:] == 0).all()  # pad keys get no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_low_precision_as_accurate_as_sdpa(dtype):
    """fp32 / bf16 inputs: the blockwise result is no further from the fp64 reference than one SDPA call in the
    same dtype is (within 2x + a floor; fp32 floor 1e-5, bf16 floor 1e-2 absolute, on O(1) values)."""
    q, k, v, w = _inputs(dtype, lq=64, lk=96, d=32)
    kv_len = 90
    ref, ref_g = _run(lambda q, k, v: _reference(q, k, v, kv_len), q, k, v, w)
    sdpa, sdpa_g = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k[:, :, :kv_len], v[:, :, :kv_len]), q, k, v, w)
    out, g = _run(lambda q, k, v: rk.blockwise_attention(q, k, v, 3, kv_len), q, k, v, w)
    assert out.dtype == dtype
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, s, r in zip(["out", "dq", "dk", "dv"], [out] + g, [sdpa] + sdpa_g, [ref] + ref_g):
        err = (a.double() - r).abs().max().item()
        sdpa_err = (s.double() - r).abs().max().item()
        assert err <= 2 * sdpa_err + floor, f"{name}: blockwise err {err:.3g} vs SDPA {sdpa_err:.3g} ({dtype})"


def test_merge_is_exact_for_disjoint_key_sets():
    q, k, v, _ = _inputs(torch.float64)
    out, lse = rk.new_accumulators(q)
    for a, b in ((0, 4), (4, 13)):
        o_b, lse_b, _ = rk._Matmul.forward(q, k[:, :, a:b], v[:, :, a:b], 0.25)
        rk.merge_(out, lse, o_b, lse_b)
    full_o, full_lse, _ = rk._Matmul.forward(q, k, v, 0.25)
    torch.testing.assert_close(out, full_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, full_lse, rtol=1e-12, atol=1e-12)


def test_kernel_selection_and_debug_log(caplog):
    rk._logged.clear()
    with caplog.at_level(logging.DEBUG, logger=rk.__name__):
        assert rk.select_kernel(torch.device("cpu"), torch.bfloat16, 128).name == "cpu-flash"
        assert rk.select_kernel(torch.device("cpu"), torch.float32, 128, "matmul").name == "matmul"
        # No fused op for this device: the portable path, with a warning saying so.
        assert rk.select_kernel(torch.device("meta"), torch.float32, 128).name == "matmul"
    text = caplog.text
    assert "cpu-flash block kernel" in text and "matmul block kernel" in text and "no fused kernel" in text
    with pytest.raises(ValueError, match="unknown ring attention kernel"):
        rk.select_kernel(torch.device("cpu"), torch.float32, 128, "fa9")
