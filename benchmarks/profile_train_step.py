"""Where the 6-block train step's time goes, and which engine variant is faster.

1. Interleaved timing: variants are timed in alternating rounds in one process (two models resident), so GPU clock
   drift between runs (±2-3% on the H100) cancels out of their difference. Both the per-step median with a
   synchronisation after every step (what `bench_train_step.py` reports) and the back-to-back mean (10 steps, one
   synchronisation: the steady state of a training loop that does not read the loss every step) are given.
2. A CUDA kernel profile per variant grouped by kind (matmul, attention, fused elementwise, copies, ...).
3. A timeline: the busiest stream's idle time inside the step and the largest gaps with their neighbours, and the
   side streams' work that did not overlap it.

Usage (CUDA): python benchmarks/profile_train_step.py --groups fsdp2+fsdp2-separate-proj,fsdp2+plain-bf16 --out p.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import setup_slice  # noqa: E402
from benchmarks.cuda_timing import cuda_time  # noqa: E402
from soraflow.models.mmdit import MMDiT  # noqa: E402
from soraflow.training.parallel.mmdit import apply_compile, set_concat_projections  # noqa: E402
from soraflow.training.strategies import FSDP2Strategy, OptimConfig  # noqa: E402

KINDS = [  # first match wins; names as they appear in CUDA kernel symbols
    ("attention_backward", re.compile(r"(flash|fmha|cudnn|sdpa|attn).*(bwd|backward|bprop|dgrad|dq|dkdv)", re.I)),
    ("attention_forward", re.compile(r"flash|fmha|cudnn_generated|sdpa|attn", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|sm90_|cublas", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("fused_triton", re.compile(r"triton", re.I)),
    ("copy_cast", re.compile(r"copy|cast|memcpy|memset|fill|chunk_cat", re.I)),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


# variant -> (strategy: a soraflow.training.strategies name, "fsdp2-root-only" or None for bf16 parameters without a
#             wrapper; its keyword arguments; concatenated projections)
VARIANTS = {
    "fsdp2": ("fsdp2", dict(param_dtype="bf16", reduce_dtype="fp32"), True),
    "fsdp2-separate-proj": ("fsdp2", dict(param_dtype="bf16", reduce_dtype="fp32"), False),
    "fsdp2-bf16-reduce": ("fsdp2", dict(param_dtype="bf16", reduce_dtype="bf16"), True),
    "fsdp2-root-only": ("fsdp2-root-only", {}, True),
    "single": ("single", dict(param_dtype="bf16"), True),
    "plain-bf16": (None, {}, True),
    "plain-bf16-separate-proj": (None, {}, False),
}


class Runner:
    """One variant: its model and optimizer, a forward+backward from gradients = None (as after
    zero_grad(set_to_none=True)) and a whole step with the optimizer update."""

    def __init__(self, name: str, cfg, x):
        from contextlib import nullcontext

        from soraflow.training.strategies import build_strategy

        kind, kwargs, self.concat = VARIANTS[name]
        self.name = name
        self.ctx = nullcontext
        torch.manual_seed(0)
        optim = OptimConfig(lr=1e-5)
        if kind is None:  # bf16 parameters and bf16 AdamW: no master weights, the compute floor
            self.model = MMDiT(cfg).to("cuda", torch.bfloat16)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=True)
        elif kind == "fsdp2-root-only":  # one FSDP unit: one cast/copy-in and one reduce per step
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            self.model = MMDiT(cfg).to("cuda")
            fully_shard(self.model, mp_policy=MixedPrecisionPolicy(torch.bfloat16, torch.float32),
                        reshard_after_forward=False)
            self.opt = FSDP2Strategy().build_optimizer(self.model, optim)
        else:
            strategy = (FSDP2Strategy(**kwargs, reshard_after_forward=False) if kind == "fsdp2"
                        else build_strategy(kind, **kwargs))
            self.model, self.opt = strategy.prepare(MMDiT(cfg), torch.device("cuda"), optim)
            self.ctx = strategy.forward_context
        apply_compile(self.model)
        self.x = x
        self.target = torch.randn_like(x["img"], dtype=torch.float32)

    def __call__(self):
        set_concat_projections(self.model, self.concat)  # read at trace time; each setting has its own compiled graph
        for p in self.model.parameters():
            p.grad = None
        with self.ctx():
            out = self.model(**self.x)
        torch.nn.functional.mse_loss(out.float(), self.target).backward()

    def step(self):
        self()
        self.opt.step()


def back_to_back(fn, steps: int = 10) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / steps


def interleaved(runners: list[Runner], rounds: int) -> dict:
    for r in runners:  # compile and warm up (the optimizer's state too)
        for _ in range(3):
            r.step()
    torch.cuda.synchronize()
    synced, b2b, full = defaultdict(list), defaultdict(list), defaultdict(list)
    for _ in range(rounds):
        for r in runners:
            synced[r.name] += cuda_time(r, warmup=0, iters=3)[1]
            b2b[r.name].append(back_to_back(r))
            full[r.name].append(back_to_back(r.step, steps=5))
    return {r.name: {"synced_median_s": statistics.median(synced[r.name]), "synced_min_s": min(synced[r.name]),
                     "back_to_back_median_s": statistics.median(b2b[r.name]),
                     "back_to_back_all_s": b2b[r.name],
                     "step_with_adamw_back_to_back_s": statistics.median(full[r.name]),
                     "group_peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30} for r in runners}


def _kernels(trace_path: str) -> list[tuple[float, float, int, str]]:
    """(start_us, end_us, stream, name) of every GPU kernel / memcpy / memset in a chrome trace."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    out = []
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            out.append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), int(e["args"].get("stream", -1)), e["name"]))
    return sorted(out)


def _union_us(intervals) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


def timeline(kernels) -> dict:
    """Idle time inside one step's GPU span, on the busiest stream and on all streams together."""
    by_stream = defaultdict(list)
    for s, e, stream, name in kernels:
        by_stream[stream].append((s, e, name))
    busy = {st: _union_us((s, e) for s, e, _ in ks) for st, ks in by_stream.items()}
    main = max(busy, key=busy.get)
    span = kernels[-1][1] - kernels[0][0] if kernels else 0.0
    gaps = []
    ks = by_stream[main]
    for (s0, e0, n0), (s1, e1, n1) in zip(ks, ks[1:]):
        if s1 - e0 > 20:  # us; launch-to-launch spacing below this is normal back-to-back issue
            gaps.append((s1 - e0, n0[:70], n1[:70]))
    gaps.sort(reverse=True)
    side = [(s, e) for st, kk in by_stream.items() if st != main for s, e, _ in kk]
    side_alone = _union_us([(s, e) for s, e, _ in ks] + side) - busy[main]
    return {"span_ms": span / 1e3, "main_stream_busy_ms": busy[main] / 1e3,
            "all_streams_busy_ms": _union_us((s, e) for s, e, _, _ in kernels) / 1e3,
            "main_stream_gaps_ms": sum(g for g, _, _ in gaps) / 1e3,
            "side_streams_busy_ms": sum(v for st, v in busy.items() if st != main) / 1e3,
            "side_streams_not_overlapped_ms": side_alone / 1e3,
            "largest_gaps": [{"ms": g / 1e3, "after": a, "before": b} for g, a, b in gaps[:10]]}


def profile(fn, steps: int = 2) -> dict:
    """Kernel time by kind (mean per step) and the timeline of each profiled step (one profile per step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    by_kind: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    timelines = []
    for _ in range(steps):
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            prof.export_chrome_trace(f.name)
            kernels = _kernels(f.name)
        timelines.append(timeline(kernels))
        for s, e, _, name in kernels:
            by_kind[kind_of(name)] += (e - s) / 1e6 / steps
            by_kernel[name[:140]] += (e - s) / 1e6 / steps
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:40]
    return {"per_step_s_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "kernel_sum_s": sum(by_kind.values()), "timelines": timelines,
            "top_kernels": [{"kernel": k, "s": v, "kind": kind_of(k)} for k, v in top]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--groups", default="fsdp2+fsdp2-separate-proj",
                    help="comma-separated groups of '+'-joined variants timed against each other; "
                         f"variants: {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    cfg, x, flops, res = setup_slice(29513)
    res["groups"] = []
    scale = res["matmul_ceiling_tflops"] / res["reference_ceiling_tflops"]  # > 1: this GPU is faster
    for group in args.groups.split(","):
        torch._dynamo.reset()
        runners = [Runner(name, cfg, x) for name in group.split("+")]
        timing = interleaved(runners, args.rounds)
        entry = {"variants": group.split("+"), "timing": timing, "profiles": {}}
        for name, t in timing.items():
            print(f"[{group}] {name:26s} synced median {t['synced_median_s']:.4f}s (min {t['synced_min_s']:.4f}) "
                  f"{flops / t['synced_median_s'] / 1e12:.0f} TFLOP/s; back-to-back "
                  f"{t['back_to_back_median_s']:.4f}s {flops / t['back_to_back_median_s'] / 1e12:.0f} TFLOP/s; with "
                  f"AdamW {t['step_with_adamw_back_to_back_s']:.4f}s; at the reference ceiling: synced "
                  f"{t['synced_median_s'] * scale:.4f}s, back-to-back {t['back_to_back_median_s'] * scale:.4f}s",
                  flush=True)
        if not args.no_profile:
            for r in runners:
                p = profile(r)
                entry["profiles"][r.name] = p
                tl = p["timelines"][-1]
                print(f"  {r.name}: kernels {p['kernel_sum_s'] * 1e3:.1f} ms; span {tl['span_ms']:.1f} ms, main "
                      f"stream busy {tl['main_stream_busy_ms']:.1f}, gaps {tl['main_stream_gaps_ms']:.1f}, side "
                      f"streams {tl['side_streams_busy_ms']:.1f} ({tl['side_streams_not_overlapped_ms']:.1f} alone)",
                      flush=True)
                for kind, s in p["per_step_s_by_kind"].items():
                    print(f"     {kind:20s} {s * 1e3:8.2f} ms", flush=True)
                for k in p["top_kernels"][:14]:
                    print(f"     {k['s'] * 1e3:7.2f} ms  {k['kind']:18s} {k['kernel'][:90]}", flush=True)
                for g in tl["largest_gaps"][:6]:
                    print(f"     gap {g['ms']:.2f} ms after {g['after'][:50]} before {g['before'][:50]}", flush=True)
        res["groups"].append(entry)
        del runners
        torch.cuda.empty_cache()
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
