"""The one-rank "master" strategy: FSDP2's numbers (bf16 compute, fp32 master weights and AdamW) from flat
buffers and one fused update; checkpoints interchangeable with FSDP2's."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from soraflow.training.flat_master import fused_adamw_


def test_fused_adamw_is_torch_adamw_on_the_fp32_gradient():
    """The fused pass (reference path here; the Triton kernel is compared with it on the GPU) equals
    torch.optim.AdamW on fp32 weights whose gradient is the bf16 gradient cast to fp32 and clipped."""
    g = torch.Generator().manual_seed(0)
    n = 1000
    master = torch.randn(n, generator=g)
    ref = torch.nn.Parameter(master.clone())
    opt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    m, v, out = torch.zeros(n), torch.zeros(n), torch.empty(n, dtype=torch.bfloat16)
    for step in range(1, 4):
        grad = torch.randn(n, generator=g).to(torch.bfloat16)
        coef = torch.tensor(0.5 if step == 2 else 1.0)
        ref.grad = grad.float() * coef
        opt.step()
        fused_adamw_(master, grad, m, v, out, coef, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                     step=step, use_triton=False)
        torch.testing.assert_close(master, ref.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m, opt.state[ref]["exp_avg"], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(v, opt.state[ref]["exp_avg_sq"], rtol=1e-6, atol=1e-10)
        assert torch.equal(out, master.to(torch.bfloat16))  # the next forward's weights: master rounded


def _batches(cfg, steps):
    from soraflow.models.packing import image_position_ids, text_position_ids

    g = torch.Generator().manual_seed(3)
    n = 2 * 2 * 2
    for _ in range(steps):
        yield (dict(img=torch.randn(2, n, cfg.in_channels, generator=g), img_ids=image_position_ids(2, 2, 4, 4, 2),
                    txt=torch.randn(2, 5, cfg.context_in_dim, generator=g), txt_ids=text_position_ids(2, 5),
                    timesteps=torch.rand(2, generator=g), y_vec=torch.randn(2, cfg.vec_in_dim, generator=g),
                    cond=torch.randn(2, n, cfg.cond_channels, generator=g)),
               torch.randn(2, n, cfg.in_channels, generator=g))


def _train(strategy_name, steps, ckpt_dir=None, load_dir=None):
    """A few bf16 steps of the tiny MMDiT with clipping; optional DCP save at the end / load at the start."""
    import torch.distributed.checkpoint as dcp

    from soraflow.models.mmdit import MMDiT, get_config
    from soraflow.training.strategies import OptimConfig, build_strategy

    cfg = get_config("tiny")
    torch.manual_seed(0)
    net = MMDiT(cfg)
    with torch.no_grad():  # non-zero cond_in so every parameter gets a gradient
        net.cond_in.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    strategy = build_strategy(strategy_name, param_dtype="bf16")
    model, opt = strategy.prepare(net, torch.device("cpu"), OptimConfig(lr=1e-3, eps=1e-8, weight_decay=0.01))
    if load_dir is not None:
        state = strategy.state_dict(model, opt)
        dcp.load(state, checkpoint_id=load_dir)
        strategy.load_state_dict(model, opt, state)
    losses, norms = [], []
    for x, y in _batches(cfg, steps):
        loss = torch.nn.functional.mse_loss(model(**x).float(), y)
        loss.backward()
        norms.append(float(strategy.clip_grad_norm(model, 0.05)))  # small: the clip engages
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    state = strategy.state_dict(model, opt)
    if ckpt_dir is not None:
        dcp.save(state, checkpoint_id=ckpt_dir)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().float().clone()
            for k, v in state["model"].items()}
    moments = {k: (e["exp_avg"].full_tensor() if hasattr(e["exp_avg"], "full_tensor") else e["exp_avg"]).clone()
               for k, e in state["optimizer"]["state"].items()}
    return losses, norms, full, moments


def _hand_reference(steps):
    """FSDP2's one-rank arithmetic written out: a bf16 copy computes, its gradients are cast to fp32 onto fp32
    master weights, clipped there, AdamW updates the masters, the bf16 copy is refreshed (round to nearest)."""
    import copy

    from soraflow.models.mmdit import MMDiT, get_config

    cfg = get_config("tiny")
    torch.manual_seed(0)
    master = MMDiT(cfg)
    with torch.no_grad():
        master.cond_in.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    compute = copy.deepcopy(master).to(torch.bfloat16)
    opt = torch.optim.AdamW(master.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01, foreach=True)
    losses, norms = [], []
    for x, y in _batches(cfg, steps):
        x = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in x.items()}
        loss = torch.nn.functional.mse_loss(compute(**x).float(), y)
        loss.backward()
        for pm, pc in zip(master.parameters(), compute.parameters()):
            pm.grad = pc.grad.float()
            pc.grad = None
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(master.parameters()), 0.05, foreach=True)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for pm, pc in zip(master.parameters(), compute.parameters()):
                pc.copy_(pm)
        losses.append(float(loss.detach()))
    moments = {n: opt.state[p]["exp_avg"] for n, p in master.named_parameters()}
    return losses, norms, {k: v.detach().clone() for k, v in master.state_dict().items()}, moments


def test_master_strategy_is_fsdp2_arithmetic_on_one_rank():
    """Same losses, gradient norms, fp32 master weights and AdamW moments as the written-out arithmetic of
    FSDP2's mixed precision on one rank (bf16 compute, fp32 gradients, clipping and AdamW on fp32 masters)."""
    rl, rn, rw, rm = _hand_reference(3)
    ml, mn, mw, mm = _train("master", 3)
    assert all(n > 0.05 for n in rn)  # the clip engaged on every step
    assert ml == pytest.approx(rl, rel=1e-6)
    assert mn == pytest.approx(rn, rel=1e-5)
    assert sorted(mw) == sorted(rw)
    for k in rw:
        assert mw[k].dtype == torch.float32
        torch.testing.assert_close(mw[k], rw[k], rtol=1e-6, atol=1e-7, msg=k)
        torch.testing.assert_close(mm[k], rm[k], rtol=1e-5, atol=1e-9, msg=k)


def _compare_in_group(queue, tmp):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        f = _train("fsdp2", 3, ckpt_dir=f"{tmp}/fsdp2")
        m = _train("master", 3, ckpt_dir=f"{tmp}/master")
        m_from_f = _train("master", 0, load_dir=f"{tmp}/fsdp2")  # steps=0: the state as loaded
        f_from_m = _train("fsdp2", 0, load_dir=f"{tmp}/master")
        queue.put(_by_value(dict(f=f, m=m, m_from_f=m_from_f, f_from_m=f_from_m)))
    finally:
        dist.destroy_process_group()


def _by_value(x):  # numpy copies: tensors through the queue would share memory with the child
    if isinstance(x, torch.Tensor):
        return x.numpy().copy()
    if isinstance(x, dict):
        return {k: _by_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_by_value(v) for v in x)
    return x


def _tensors(x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, dict):
        return {k: _tensors(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tensors(v) for v in x)
    return x


@pytest.fixture(scope="module")
def with_fsdp2(tmp_path_factory):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_compare_in_group, args=(q, str(tmp_path_factory.mktemp("ckpt"))))
    p.start()
    out = q.get(timeout=600)
    p.join(timeout=60)
    return _tensors(out)


def test_master_strategy_follows_fsdp2(with_fsdp2):
    """Against FSDP2 itself on a one-rank group: the same to within bf16 summation order (FSDP2 routes each
    block's inputs through its own autograd function, so the bf16 gradient of `vec`, shared by all blocks, is
    summed in another order; AdamW's normalised step makes that visible in the small time/vector embedders)."""
    (fl, fn, fw, fm), (ml, mn, mw, mm) = with_fsdp2["f"], with_fsdp2["m"]
    assert ml == pytest.approx(fl, rel=1e-3)
    assert mn == pytest.approx(fn, rel=1e-3)
    assert sorted(fw) == sorted(mw) and sorted(fm) == sorted(mm)
    for k in fw:  # within 5 AdamW steps of lr 1e-3 of each other, after 3 steps
        torch.testing.assert_close(mw[k], fw[k], rtol=0, atol=5e-3, msg=k)


def test_master_and_fsdp2_checkpoints_load_into_each_other(with_fsdp2):
    """DCP checkpoints of either strategy load into the other: weights (fp32) and AdamW moments exactly."""
    for saved, loaded in (("f", "m_from_f"), ("m", "f_from_m")):
        _, _, w_saved, m_saved = with_fsdp2[saved]
        _, _, w_loaded, m_loaded = with_fsdp2[loaded]
        assert sorted(w_saved) == sorted(w_loaded) and sorted(m_saved) == sorted(m_loaded)
        for k in w_saved:
            assert torch.equal(w_loaded[k], w_saved[k]), k
        for k in m_saved:
            assert torch.equal(m_loaded[k], m_saved[k]), k


def test_parameters_without_a_gradient_are_left_alone():
    """torch's AdamW skips a parameter whose .grad is None (no update, no moment decay); so does FlatAdamW."""
    from soraflow.training.strategies import OptimConfig, build_strategy

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    strategy = build_strategy("master", param_dtype="bf16")
    model, opt = strategy.prepare(net, torch.device("cpu"), OptimConfig(lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model[0](torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()  # only the first layer is used
    strategy.clip_grad_norm(model, 1.0)
    opt.step()
    after = model.state_dict()
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["1.bias"], before["1.bias"])
    assert all(v.dtype == torch.float32 for v in after.values())  # the state dict reports the master weights
    assert model[0].weight.dtype == torch.bfloat16
    assert torch.equal(model[0].weight, after["0.weight"].to(torch.bfloat16))
