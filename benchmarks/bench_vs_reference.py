"""The official Open-Sora 2.0 MMDiT and soraflow's, side by side in one process: same inputs, same CUDA-event
timer (`benchmarks/cuda_timing.py`), reference numbers measured here, never typed in.

Figures:
- 11B forward (19 double + 38 single blocks), 256x256x129 frames = 8448 video + 512 text tokens, random bf16
  weights, batch 1 and 3, no gradients. Reference: its code as released, eager, with its best SDPA backend
  (cuDNN and flash both measured; the faster one is the reference figure). soraflow: what `soraflow generate`
  runs (fused projections, compiled blocks, CUDA-graph replay; cuDNN attention).
- The 6-block slice (2 double + 4 single blocks at the 11B width), batch 1, whole training step: forward,
  fp32 MSE, backward, gradient clipping at 1.0, AdamW (lr 1e-5, eps 1e-15 as the official config), zero_grad.
  Reference: bf16 parameters and torch's fused AdamW on them (no master weights: its own trainer adds ZeRO-2
  fp32 master weights through ColossalAI, which is slower, so this reference is the generous one). soraflow:
  the trainer's strategy for its GPU recipes at this world size (`effective_strategy("fsdp2", 1, "cuda")`), built
  and stepped the way `training/trainer.py` does, `model.compile` on; optionally with `model.fp8`.

The reference is imported from an Open-Sora checkout (`--reference-repo`, the folder holding `opensora/`), with
small stand-ins for what this machine lacks: `flash_attn.flash_attn_func` as torch SDPA on the same
(B, L, H, D) layout, `liger_kernel`'s RoPE and RMSNorm when the package is missing (the real Triton kernels when
it is installed), the model registry, and the checkpoint helpers (random weights: never called). None of its
code is copied here; the checkout is read at run time.

Usage (CUDA): python benchmarks/bench_vs_reference.py --reference-repo /path/to/Open-Sora --out result.json
CPU smoke run of the code paths (tiny widths, wall-clock timer, no numbers worth keeping):
    python benchmarks/bench_vs_reference.py --reference-repo DIR --smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import cuda_time  # noqa: E402
from soraflow.models.mmdit import MMDiT, get_config, mmdit_forward_flops  # noqa: E402
from soraflow.training.parallel.mmdit import apply_compile, set_sdpa_backend  # noqa: E402
from soraflow.models.packing import image_position_ids, text_position_ids  # noqa: E402

GIB = 2**30


# ---- the reference, imported from a checkout -------------------------------------------------------------------

def _module(name: str, path: Path | None = None, **attrs) -> types.ModuleType:
    """A module in sys.modules; with `path`, a package whose submodules load from that folder (its __init__ is
    not run: the checkout's package __init__s import every model family and ColossalAI)."""
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [str(path)]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _flash_attn_func(q, k, v, *args, **kwargs):
    """flash_attn_func's contract, (B, L, H, D) in and out, as torch SDPA (whose backend flags pick cuDNN or
    flash): softmax scale 1/sqrt(D), no mask, no dropout, which is how the reference calls it."""
    if args or kwargs:
        raise NotImplementedError(f"flash_attn stand-in: only (q, k, v) is supported, got {args} {kwargs}")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class _RopeStandIn(torch.autograd.Function):
    """liger_kernel.ops.rope.LigerRopeFunction's contract: q, k [B, H, L, D], cos/sin [1 or B, L, D] in the
    rotate-half layout (dim j pairs with j + D/2); computed in fp32, returned in the input dtype."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        return _rotate(dq, cos, -sin), _rotate(dk, cos, -sin), None, None, None, None


def _rotate(x, cos, sin):
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.unsqueeze(1).float() + rot * sin.unsqueeze(1).float()).to(x.dtype)


class _RMSNormStandIn(torch.autograd.Function):
    """liger_kernel.ops.rms_norm.LigerRMSNormFunction's contract in "llama" casting mode:
    (x * rsqrt(mean(x^2) + eps) computed in fp32, cast to x's dtype) * (offset + weight)."""

    @staticmethod
    def forward(ctx, x, weight, eps, offset=0.0, casting_mode="llama", in_place=False):
        if casting_mode != "llama":
            raise NotImplementedError(f"RMSNorm stand-in: casting mode {casting_mode!r}")
        with torch.enable_grad():
            xd, wd = x.detach().requires_grad_(), weight.detach().requires_grad_()
            xf = xd.float()
            y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * (offset + wd)
        ctx.save_for_backward(xd, wd, y)
        return y.detach()

    @staticmethod
    def backward(ctx, dy):
        xd, wd, y = ctx.saved_tensors
        dx, dw = torch.autograd.grad(y, (xd, wd), dy)
        return dx, dw, None, None, None, None


def _auto_grad_checkpoint(module, *args, **kwargs):
    """opensora.acceleration.checkpoint.auto_grad_checkpoint without its ColossalAI import: the module's own
    forward unless it asks for checkpointing (the benchmark's slices do not)."""
    if getattr(module, "grad_checkpointing", False):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(module, *args, use_reentrant=True, **kwargs)
    return module(*args, **kwargs)


class _Registry:
    def register_module(self, name=None, force=False, module=None):
        return (lambda fn: fn) if module is None else module


def _no_checkpoint(*args, **kwargs):
    raise RuntimeError("the benchmark uses random weights; the reference's checkpoint loader is not available")


def load_reference(repo: Path, liger: str = "auto") -> tuple[object, dict]:
    """(the reference's `Flux` builder, notes on what was stood in). `liger`: auto | real | stand-in."""
    pkg = repo / "opensora"
    for rel in ("models/mmdit/model.py", "models/mmdit/layers.py", "models/mmdit/math.py"):
        if not (pkg / rel).is_file():
            raise FileNotFoundError(f"--reference-repo {repo}: no opensora/{rel} (expected an Open-Sora checkout)")
    notes = {"flash_attn": "stand-in: torch SDPA, (B, L, H, D) layout"}
    real = False
    if liger == "real" or (liger == "auto" and torch.cuda.is_available()):
        try:
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction  # noqa: F401
            from liger_kernel.ops.rope import LigerRopeFunction  # noqa: F401
            import liger_kernel
            real = True
            notes["liger_kernel"] = f"real {getattr(liger_kernel, '__version__', '')}".strip()
        except Exception as exc:  # noqa: BLE001
            if liger == "real":
                raise
            notes["liger_kernel_import_error"] = repr(exc)[:200]
    # After liger's own import: it probes for an installed flash_attn, which the stand-in module is not.
    sys.modules.pop("flash_attn", None)
    _module("flash_attn", flash_attn_func=_flash_attn_func)
    sys.modules["flash_attn_interface"] = None  # no FA3 here: the reference falls back to flash_attn_func
    liger_names = ("liger_kernel", "liger_kernel.ops", "liger_kernel.ops.rope", "liger_kernel.ops.rms_norm")
    saved = {n: sys.modules.get(n) for n in liger_names}  # a real liger stays importable for an earlier build
    if not real:
        _module("liger_kernel")
        _module("liger_kernel.ops")
        _module("liger_kernel.ops.rope", LigerRopeFunction=_RopeStandIn)
        _module("liger_kernel.ops.rms_norm", LigerRMSNormFunction=_RMSNormStandIn)
        notes["liger_kernel"] = "stand-in: torch RoPE (rotate-half, fp32) and RMSNorm (llama casting)"
    for name in [m for m in sys.modules if m == "opensora" or m.startswith("opensora.")]:
        del sys.modules[name]
    _module("opensora", pkg)
    _module("opensora.models", pkg / "models")
    _module("opensora.models.mmdit", pkg / "models" / "mmdit")
    _module("opensora.registry", MODELS=_Registry())
    _module("opensora.utils", pkg / "utils")
    _module("opensora.utils.ckpt", load_checkpoint=_no_checkpoint)
    _module("opensora.acceleration", pkg / "acceleration")
    _module("opensora.acceleration.checkpoint", auto_grad_checkpoint=_auto_grad_checkpoint)
    spec = importlib.util.find_spec("opensora.models.mmdit.model")
    model_mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = model_mod
    try:
        spec.loader.exec_module(model_mod)
    finally:
        if not real:
            for n, mod in saved.items():
                if mod is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = mod
    notes["registry"] = "stand-in: register_module returns the function"
    notes["checkpoint_helper"] = "stand-in: load_checkpoint refuses (random weights)"
    return model_mod.Flux, notes


def reference_kwargs(cfg) -> dict:
    """The official config's `model=dict(...)` (configs/diffusion/train/*.py) for our config's widths."""
    return dict(guidance_embed=False, fused_qkv=False, use_liger_rope=True, grad_ckpt_settings=None,
                in_channels=cfg.in_channels, vec_in_dim=cfg.vec_in_dim, context_in_dim=cfg.context_in_dim,
                hidden_size=cfg.hidden_size, mlp_ratio=cfg.mlp_ratio, num_heads=cfg.num_heads, depth=cfg.depth,
                depth_single_blocks=cfg.depth_single_blocks, axes_dim=list(cfg.axes_dim), theta=cfg.theta,
                qkv_bias=cfg.qkv_bias, cond_embed=cfg.cond_embed, patch_size=cfg.patch_size)


# ---- inputs, timers, memory --------------------------------------------------------------------------------------

def make_inputs(cfg, batch, device, t_lat, h_lat, w_lat, n_txt, seed=0):
    dt = torch.bfloat16
    p = cfg.patch_size
    n_img = t_lat * (h_lat // p) * (w_lat // p)
    g = torch.Generator(device).manual_seed(seed)
    return dict(
        img=torch.randn(batch, n_img, cfg.in_channels, device=device, dtype=dt, generator=g),
        img_ids=image_position_ids(batch, t_lat, h_lat, w_lat, p, device=device, dtype=dt),
        txt=torch.randn(batch, n_txt, cfg.context_in_dim, device=device, dtype=dt, generator=g),
        txt_ids=text_position_ids(batch, n_txt, device=device, dtype=dt),
        timesteps=torch.full((batch,), 0.7, device=device, dtype=dt),
        y_vec=torch.randn(batch, cfg.vec_in_dim, device=device, dtype=dt, generator=g),
        cond=torch.randn(batch, n_img, cfg.cond_channels, device=device, dtype=dt, generator=g) * 0.1,
    )


def wall_time(fn, warmup=1, iters=2):
    """The smoke run's timer (CPU): the same protocol as cuda_time with time.perf_counter."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], times


def fresh(device):
    """Free the last variant: dynamo's caches hold its compiled graphs (and through them its tensors), so they
    go first, then the garbage cycles; the peak counter restarts from what is left (recorded per row)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def allocated_gib(device) -> float | None:
    return torch.cuda.memory_allocated() / GIB if device.type == "cuda" else None


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None


def capture_graph(model, inputs):
    """Warm up on a side stream, capture one forward in a CUDA graph, return its replay (as sampling does)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(**inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(**inputs)
    return graph.replay


# ---- the figures -------------------------------------------------------------------------------------------------

def forward_rows(args, cfg, device, timer, shape, rows, out):
    """11B forward at each batch: the reference under each of its variants (liger kernels x SDPA backend), then
    soraflow's generate path."""
    for label, builder, backends in args.ref_variants:
        fresh(device)
        with torch.device(device):
            torch.manual_seed(0)
            ref = builder(device_map=device, torch_dtype=torch.bfloat16, **reference_kwargs(cfg))
        ref = ref.eval().requires_grad_(False)
        weights = sum(p.numel() * p.element_size() for p in ref.parameters()) / GIB
        for b in args.batches:
            x = make_inputs(cfg, b, device, *shape)
            flops = mmdit_forward_flops(cfg, x["img"].shape[1], x["txt"].shape[1], b)
            for backend in backends:
                set_sdpa_backend(backend)
                before = allocated_gib(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    med, ts = timer(lambda: ref(**x))
                rows.append(dict(figure=f"forward_b{b}", code="reference", variant=f"eager-{backend}, liger {label}",
                                 batch=b, seconds=med, min=min(ts), max=max(ts), tflops=flops / med / 1e12,
                                 peak_gib=peak_gib(device), allocated_before_gib=before, weights_gib=weights))
                print(_fmt(rows[-1]), flush=True)
                out()
            del x
        del ref
    fresh(device)
    set_sdpa_backend("cudnn" if device.type == "cuda" else "all")
    with torch.device(device):
        torch.manual_seed(0)
        ours = MMDiT(cfg)
    ours = ours.to(torch.bfloat16).eval().requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for p in ours.parameters()) / GIB
    variant = "eager"
    ours.fuse_projections()
    if not args.smoke:
        apply_compile(ours)
        variant = "compiled-cudnn-fused-graph"
    for b in args.batches:
        x = make_inputs(cfg, b, device, *shape)
        flops = mmdit_forward_flops(cfg, x["img"].shape[1], x["txt"].shape[1], b)
        before = allocated_gib(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        with torch.no_grad():
            fn = capture_graph(ours, x) if device.type == "cuda" else (lambda: ours(**x))
            med, ts = timer(fn)
        rows.append(dict(figure=f"forward_b{b}", code="soraflow", variant=variant, batch=b, seconds=med,
                         min=min(ts), max=max(ts), tflops=flops / med / 1e12, peak_gib=peak_gib(device),
                         allocated_before_gib=before, weights_gib=weights,
                         first_call_and_timing_s=time.time() - t0))
        print(_fmt(rows[-1]), flush=True)
        out()
        del x, fn
    del ours
    fresh(device)
    return rows


def _reference_step(model, x, target, grad_clip):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-15, weight_decay=0.0,
                            fused=next(model.parameters()).is_cuda)

    def step():
        loss = F.mse_loss(model(**x).float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        float(loss.detach())  # as the soraflow step: the loss is read before the update
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _soraflow_step(strategy, model, opt, x, target, grad_clip):
    """The trainer's step (training/trainer.py `Trainer.train`), in its order."""
    from soraflow.models.flow import flow_matching_loss

    def step():
        with strategy.forward_context():
            loss = flow_matching_loss(model(**x), target)
        strategy.backward(loss, opt)
        strategy.clip_grad_norm(model, grad_clip)
        float(loss.detach())  # the trainer reads the loss (loss guard) before the update
        opt.step()
        opt.zero_grad(set_to_none=True)
        strategy.after_optimizer_step(model)

    return step


def train_rows(args, device, timer, shape, rows, out):
    from soraflow.training.trainer import effective_strategy

    cfg = args.slice_cfg
    x = make_inputs(cfg, 1, device, *shape)
    target = torch.randn(x["img"].shape, device=device, generator=torch.Generator(device).manual_seed(1))
    flops = 3 * mmdit_forward_flops(cfg, x["img"].shape[1], x["txt"].shape[1], 1)
    for label, builder, backends in args.ref_variants:
        for backend in backends:
            set_sdpa_backend(backend)
            fresh(device)
            with torch.device(device):
                torch.manual_seed(0)
                ref = builder(device_map=device, torch_dtype=torch.bfloat16, **reference_kwargs(cfg))
            ref.train()
            step = _reference_step(ref, x, target, 1.0)
            med, ts = timer(step)
            rows.append(dict(figure="train_step_6block", code="reference",
                             variant=f"eager-{backend}, liger {label}, bf16 params, fused AdamW", seconds=med,
                             min=min(ts), max=max(ts), tflops=flops / med / 1e12, peak_gib=peak_gib(device)))
            print(_fmt(rows[-1]), flush=True)
            out()
            del ref, step
    set_sdpa_backend("cudnn" if device.type == "cuda" else "all")
    world_strategy = effective_strategy("fsdp2", 1, device.type) if device.type == "cuda" else "master"
    for variant in args.train_variants:  # strategy[+fp8 recipe]
        try:
            _soraflow_train_row(args, variant, world_strategy, cfg, device, timer, x, target, flops, rows)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' figures
            rows.append(dict(figure="train_step_6block", code="soraflow", variant=variant, error=repr(exc)[:500]))
            print("FAILED", variant, repr(exc)[:500], flush=True)
        out()
    fresh(device)
    return rows


def _soraflow_train_row(args, variant, world_strategy, cfg, device, timer, x, target, flops, rows):
    """One soraflow variant of the slice's step: built, compiled and stepped as the trainer does."""
    from soraflow.training.strategies import OptimConfig, build_strategy

    name, _, fp8 = variant.partition("+")
    name = world_strategy if name == "trainer" else name
    fresh(device)
    torch.manual_seed(0)
    module = MMDiT(cfg)
    if fp8:
        from soraflow.training.parallel.fp8 import convert_to_fp8_training

        convert_to_fp8_training(module, fp8, fsdp_all_gather=name == "fsdp2", emulate=device.type != "cuda")
    if name == "fsdp2" and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", store=torch.distributed.HashStore(), rank=0, world_size=1)
    strategy = build_strategy(name, param_dtype="bf16")
    model, opt = strategy.prepare(module, device, OptimConfig(lr=1e-5, eps=1e-15))
    if not args.smoke:
        apply_compile(model)  # model.compile = true in the GPU recipes
    model.train()
    step = _soraflow_step(strategy, model, opt, x, target, 1.0)
    t0 = time.time()
    med, ts = timer(step)
    rows.append(dict(figure="train_step_6block", code="soraflow", variant=f"{name}{'+fp8-' + fp8 if fp8 else ''}"
                     f"{'' if args.smoke else ', compiled'}", strategy=name, fp8=fp8 or None, seconds=med,
                     min=min(ts), max=max(ts), tflops=flops / med / 1e12, peak_gib=peak_gib(device),
                     first_call_and_timing_s=time.time() - t0))
    print(_fmt(rows[-1]), flush=True)
    del model, opt, strategy, step, module


def check_fused_adamw(device) -> dict:
    """The Triton AdamW pass against the torch reference path on the same random state (GPU only)."""
    from soraflow.training.flat_master import fused_adamw_

    g = torch.Generator(device).manual_seed(0)
    n = 10_000_019  # not a multiple of the block: the masked tail is exercised
    master = torch.randn(n, device=device, generator=g)
    m = torch.randn(n, device=device, generator=g) * 1e-3
    v = torch.rand(n, device=device, generator=g) * 1e-6
    grad = (torch.randn(n, device=device, generator=g) * 1e-3).to(torch.bfloat16)
    coef = torch.tensor(0.7, device=device)
    outs = []
    for use_triton in (True, False):
        state = [master.clone(), m.clone(), v.clone(), torch.empty(n, dtype=torch.bfloat16, device=device)]
        fused_adamw_(state[0], grad, state[1], state[2], state[3], coef, lr=1e-4, beta1=0.9, beta2=0.999,
                     eps=1e-15, weight_decay=0.01, step=5, use_triton=use_triton)
        outs.append(state)
    # max |difference| over max |value|: elementwise ratios blow up where a moment crosses zero
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    res = {"n": n, "master_max_err_over_max": rel(outs[0][0], outs[1][0]),
           "exp_avg_max_err_over_max": rel(outs[0][1], outs[1][1]),
           "exp_avg_sq_max_err_over_max": rel(outs[0][2], outs[1][2]),
           "bf16_weights_equal_fraction": float((outs[0][3] == outs[1][3]).float().mean())}
    print("fused AdamW, Triton vs torch:", res, flush=True)
    return res


def summarize(rows) -> list[dict]:
    table = []
    for fig in dict.fromkeys(r["figure"] for r in rows):
        refs = [r for r in rows if r["figure"] == fig and r["code"] == "reference" and "seconds" in r]
        ours = [r for r in rows if r["figure"] == fig and r["code"] == "soraflow" and "seconds" in r]
        if not refs or not ours:
            continue
        best_ref = min(refs, key=lambda r: r["seconds"])
        for o in ours:
            table.append(dict(figure=fig, reference_variant=best_ref["variant"], reference_s=best_ref["seconds"],
                              soraflow_variant=o["variant"], soraflow_s=o["seconds"],
                              ratio=best_ref["seconds"] / o["seconds"], reference_peak_gib=best_ref["peak_gib"],
                              soraflow_peak_gib=o["peak_gib"]))
    return table


def _fmt(r) -> str:
    peak = f"{r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else "-"
    return (f"{r['figure']:18s} {r['code']:9s} {r['variant']:44s} {r['seconds']:.4f}s "
            f"({r['min']:.4f}-{r['max']:.4f}) {r['tflops']:.0f} TFLOP/s peak {peak}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", required=True, type=Path, help="an Open-Sora checkout (holds opensora/)")
    ap.add_argument("--reference-rev", default=None, help="its revision, recorded (default: git rev-parse)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--figures", default="forward,train", help="comma list: forward, train")
    ap.add_argument("--batches", default="1,3")
    ap.add_argument("--ref-backends", default="cudnn,flash", help="SDPA backends tried for the reference")
    ap.add_argument("--train-variants", default="trainer,trainer+tensorwise",
                    help="soraflow train-step variants: STRATEGY[+FP8RECIPE]; 'trainer' = what the trainer uses "
                         "on one GPU (also: fsdp2, master)")
    ap.add_argument("--liger", default="auto", choices=("auto", "real", "stand-in"),
                    help="auto: the reference with liger's kernels and with torch stand-ins, both timed")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny widths: exercises the code paths only")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.ref_backends = args.ref_backends.split(",")
    args.train_variants = [v for v in args.train_variants.split(",") if v]
    figures = args.figures.split(",")

    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        cfg = get_config("opensora2-11b", hidden_size=128, num_heads=2, axes_dim=(16, 24, 24), depth=1,
                         depth_single_blocks=1, vec_in_dim=32, context_in_dim=64)
        shape = (2, 8, 8, 16)
        args.ref_backends = ["all"]
        timer = lambda fn: wall_time(fn)  # noqa: E731
    else:
        cfg = get_config("opensora2-11b")
        shape = (33, 32, 32, 512)  # 33 latent frames of 32x32 (256x256x129 px), patch 2: 8448 + 512 tokens
        timer = lambda fn: cuda_time(fn, warmup=args.warmup, iters=args.iters)  # noqa: E731
    args.slice_cfg = cfg.with_overrides(depth=2, depth_single_blocks=4)
    rev = args.reference_rev
    if rev is None:
        try:
            rev = subprocess.run(["git", "-C", str(args.reference_repo), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        except Exception:  # noqa: BLE001 - an unpacked checkout without .git
            rev = "unknown"
    # The reference with the real liger kernels where the package imports (CUDA), and with the torch stand-ins;
    # each under the SDPA backends asked for (the stand-in build under the first one only: it decides whether
    # liger's kernels or plain torch serve the reference better, not the backend).
    args.ref_variants, notes = [], {}
    for liger in (["real", "stand-in"] if args.liger == "auto" and not args.smoke else [args.liger]):
        try:
            builder, n = load_reference(args.reference_repo, liger)
        except Exception as exc:  # noqa: BLE001 - e.g. liger_kernel not installed: the stand-in build remains
            notes[f"liger_{liger}_unavailable"] = repr(exc)[:300]
            continue
        label = "real" if n["liger_kernel"].startswith("real") else "stand-in"
        notes[f"liger_kernel_{label}"] = n.pop("liger_kernel")
        notes.update(n)
        args.ref_variants.append((label, builder, args.ref_backends if label == "real" or args.smoke
                                  else args.ref_backends[:1]))
    if not args.ref_variants:
        raise RuntimeError(f"the reference could not be imported from {args.reference_repo}: {notes}")
    res = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "reference": {"repo": str(args.reference_repo), "rev": rev, **notes},
           "tokens": {"video": shape[0] * (shape[1] // 2) * (shape[2] // 2), "text": shape[3]},
           "timer": "benchmarks/cuda_timing.py cuda_time: median of "
                    f"{args.iters} after {args.warmup} warm-up calls, CUDA events, synchronised after each call",
           "rows": []}
    try:
        import torchao

        res["torchao"] = torchao.__version__
    except Exception:  # noqa: BLE001
        res["torchao"] = None

    def write():
        res["summary"] = summarize(res["rows"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        res["fused_adamw_check"] = check_fused_adamw(device)
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        med, _ = cuda_time(lambda: a @ a, warmup=5, iters=20)
        res["matmul_ceiling_tflops"] = 2 * 8192**3 / med / 1e12
        del a
        print(f"bf16 matmul 8192^3: {res['matmul_ceiling_tflops']:.0f} TFLOP/s", flush=True)
    write()
    runners = {"train": lambda: train_rows(args, device, timer, shape, res["rows"], write),
               "forward": lambda: forward_rows(args, cfg, device, timer, shape, res["rows"], write)}
    for fig in figures:  # in the order asked for
        try:
            runners[fig]()
        except Exception as exc:  # noqa: BLE001 - keep what was measured, go on with the next figure
            res.setdefault("errors", []).append(f"{fig}: {exc!r}"[:1000])
            print("FAILED", fig, repr(exc)[:1000], flush=True)
            fresh(device)
        write()
    for t in res["summary"]:
        print(f"{t['figure']:18s} reference {t['reference_s']:.4f}s ({t['reference_variant']}) | soraflow "
              f"{t['soraflow_s']:.4f}s ({t['soraflow_variant']}) | {t['ratio']:.3f}x", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
