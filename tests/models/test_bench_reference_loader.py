"""The benchmark's reference build (benchmarks/bench_vs_reference.py): the official MMDiT imported from an
Open-Sora checkout with the stand-ins computes what soraflow's MMDiT computes with the same weights, forward and
backward, so the side-by-side timings compare one model. Needs a checkout: SORAFLOW_OPENSORA_REPO=<dir holding
opensora/> (skipped otherwise; the checkout is never part of this repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = os.environ.get("SORAFLOW_OPENSORA_REPO")
pytestmark = pytest.mark.skipif(not REPO or not (Path(REPO) / "opensora/models/mmdit/model.py").is_file(),
                                reason="set SORAFLOW_OPENSORA_REPO to an Open-Sora checkout")


def test_reference_build_matches_soraflow_forward_and_backward():
    import benchmarks.bench_vs_reference as bench
    from soraflow.models.mmdit import MMDiT, get_config

    flux, notes = bench.load_reference(Path(REPO), "stand-in")
    assert notes["liger_kernel"].startswith("stand-in")
    cfg = get_config("opensora2-11b", hidden_size=128, num_heads=2, axes_dim=(16, 24, 24), depth=1,
                     depth_single_blocks=2, vec_in_dim=32, context_in_dim=64)
    torch.manual_seed(0)
    ours = MMDiT(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.05)  # every weight matters (cond_in, gates), not only the init's
    ref = flux(device_map="cpu", torch_dtype=torch.float32, **bench.reference_kwargs(cfg))
    ref.load_state_dict(ours.state_dict(), strict=True)  # same keys: the official layout
    x = {k: v.float() for k, v in bench.make_inputs(cfg, 2, torch.device("cpu"), 2, 8, 8, 16).items()}
    a, r = ours(**x), ref(**x)
    torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    a.square().mean().backward()
    r.square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
