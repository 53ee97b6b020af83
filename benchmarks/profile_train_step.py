"""Where the 6-block train step's time goes: a CUDA kernel profile grouped by kind (matmul, attention forward,
attention backward, fused elementwise, copies, communication), plus the same step without FSDP2 to size the
wrapper's cost.

Usage (CUDA): python benchmarks/profile_train_step.py --out profile.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import setup_slice  # noqa: E402
from benchmarks.cuda_timing import cuda_time  # noqa: E402
from models.mmdit import MMDiT  # noqa: E402
from training.strategies import FSDP2Strategy, OptimConfig  # noqa: E402

KINDS = [  # first match wins; names as they appear in CUDA kernel symbols
    ("attention_backward", re.compile(r"(flash|fmha|cudnn|sdpa|attn).*(bwd|backward|dgrad|dq|dkdv)", re.I)),
    ("attention_forward", re.compile(r"flash|fmha|cudnn_generated|sdpa|attn", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|sm90_|cublas", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("fused_triton", re.compile(r"triton", re.I)),
    ("copy_cast", re.compile(r"copy|cast|memcpy|memset|fill", re.I)),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def profile(fn, steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = evt.self_device_time_total if hasattr(evt, "self_device_time_total") else evt.self_cuda_time_total
        by_kind[kind_of(evt.key)] += us / 1e6 / steps
        by_kernel[evt.key[:140]] += us / 1e6 / steps
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:40]
    return {"per_step_s_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "kernel_sum_s": sum(by_kind.values()),
            "top_kernels": [{"kernel": k, "s": v, "kind": kind_of(k)} for k, v in top]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--variants", default="fsdp2,fsdp2-root-only,plain-bf16")
    args = ap.parse_args()
    cfg, x, flops, res = setup_slice(29513)
    for variant in args.variants.split(","):
        torch._dynamo.reset()
        torch.manual_seed(0)
        if variant == "fsdp2":
            model, _ = FSDP2Strategy("bf16", "fp32", reshard_after_forward=False).prepare(
                MMDiT(cfg), torch.device("cuda"), OptimConfig(lr=1e-5))
        elif variant == "fsdp2-root-only":  # one FSDP unit: one all-gather and one reduce-scatter per step
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            model = MMDiT(cfg).to("cuda")
            fully_shard(model, mp_policy=MixedPrecisionPolicy(torch.bfloat16, torch.float32),
                        reshard_after_forward=False)
        else:  # bf16 parameters, no wrapper: the floor for what FSDP2's casts and hooks cost on one GPU
            model = MMDiT(cfg).to("cuda", torch.bfloat16)
        for block in list(model.double_blocks) + list(model.single_blocks):
            block.compile()
        target = torch.randn_like(x["img"], dtype=torch.float32)

        def fwd_bwd():  # gradients start from None, as after the trainer's zero_grad(set_to_none=True)
            for p in model.parameters():
                p.grad = None
            torch.nn.functional.mse_loss(model(**x).float(), target).backward()

        med, _ = cuda_time(fwd_bwd)
        row = {"variant": variant, "fwd_bwd_s": med, "tflops": flops / med / 1e12, **profile(fwd_bwd)}
        res["rows"].append(row)
        print(f"{variant}: {med:.4f}s {row['tflops']:.0f} TFLOP/s; kernels {row['kernel_sum_s']:.4f}s", flush=True)
        for kind, s in row["per_step_s_by_kind"].items():
            print(f"   {kind:20s} {s * 1e3:8.2f} ms", flush=True)
        for k in row["top_kernels"][:15]:
            print(f"   {k['s'] * 1e3:7.2f} ms  {k['kind']:18s} {k['kernel'][:100]}", flush=True)
        del model
        torch.cuda.empty_cache()
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
