"""11B MMDiT forward at 256x256x129 frames (8448 video + 512 text tokens), bf16, random weights, one GPU.

Usage (on a CUDA machine):  python benchmarks/bench_mmdit_forward.py --out results.json
Prints a table: variant, batch, median seconds, achieved TFLOP/s (design.md §7 FLOP formula), and a
kernel-time split (attention / matmul / other) from torch.profiler for the fastest variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import cuda_time  # noqa: E402
from soraflow.models.mmdit import MMDiT, get_config, mmdit_forward_flops  # noqa: E402
from soraflow.training.parallel.mmdit import apply_compile, set_sdpa_backend  # noqa: E402
from soraflow.models.packing import image_position_ids, text_position_ids  # noqa: E402


def matmul_ceiling():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t, _ = cuda_time(lambda: a @ b, warmup=5, iters=20)
    return 2 * 8192**3 / t / 1e12


def make_inputs(cfg, batch, t_lat=33, h_lat=32, w_lat=32, n_txt=512):
    dev, dt = "cuda", torch.bfloat16
    p = cfg.patch_size
    n_img = t_lat * (h_lat // p) * (w_lat // p)
    g = torch.Generator(dev).manual_seed(0)
    return dict(
        img=torch.randn(batch, n_img, cfg.in_channels, device=dev, dtype=dt, generator=g),
        img_ids=image_position_ids(batch, t_lat, h_lat, w_lat, p, device=dev, dtype=dt),
        txt=torch.randn(batch, n_txt, cfg.context_in_dim, device=dev, dtype=dt, generator=g),
        txt_ids=text_position_ids(batch, n_txt, device=dev, dtype=dt),
        timesteps=torch.full((batch,), 0.7, device=dev, dtype=dt),
        y_vec=torch.randn(batch, cfg.vec_in_dim, device=dev, dtype=dt, generator=g),
        cond=torch.zeros(batch, n_img, cfg.cond_channels, device=dev, dtype=dt),
    )


def capture_graph(model, inputs):
    """Warm up, capture one forward in a CUDA graph, return its replay (static shapes, as in sampling)."""
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


def kernel_split(model, inputs):
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(**inputs)
        torch.cuda.synchronize()
    split = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    top = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if ev.key.startswith(("aten::", "cuda", "Memcpy", "Memset", "Torch-Compiled", "CompiledFunction")):
            continue  # CPU-side op rows and wrappers double count their kernels
        name = ev.key.lower()
        top.append((us / 1e3, ev.count, ev.key[:90]))
        if any(s in name for s in ("flash", "fmha", "cudnn", "attention", "sdpa")):
            split["attention"] += us
        elif any(s in name for s in ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul", "wgmma")):
            split["matmul"] += us
        else:
            split["other"] += us
    for ms, count, key in sorted(top, reverse=True)[:25]:
        print(f"  {ms:8.2f} ms  x{count:4d}  {key}")
    return {k: v / 1e6 for k, v in split.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    # mode-backend[-fused][-graph][-autotune]: mode eager | compiled (per block) | whole (one graph);
    # fused = the inference fast path (one q/k/v GEMM, GELU in the GEMM epilogue, linear2 without concat);
    # graph = replay a captured CUDA graph; autotune = inductor max-autotune GEMM selection
    ap.add_argument("--variants", default="eager-cudnn,compiled-cudnn,compiled-cudnn-fused,compiled-cudnn-fused-graph")
    ap.add_argument("--batches", default="1,3")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = True
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["matmul_ceiling_tflops"] = matmul_ceiling()
    print(f"bf16 matmul ceiling (8192^3): {results['matmul_ceiling_tflops']:.0f} TFLOP/s", flush=True)

    cfg = get_config("opensora2-11b")
    rows = []
    results["rows"] = rows
    model = None
    for variant in args.variants.split(","):
        mode, backend, *extra = variant.split("-")
        # A fresh model and a fresh dynamo cache per variant, so no variant reuses another's compiled graph.
        del model
        torch.cuda.empty_cache()
        torch._dynamo.reset()
        set_sdpa_backend(backend)
        with torch.device("cuda"):
            model = MMDiT(cfg)
        model = model.to(torch.bfloat16).eval().requires_grad_(False)
        if "fused" in extra:
            model.fuse_projections()
        if mode == "compiled":
            apply_compile(model, **({"mode": "max-autotune-no-cudagraphs"} if "autotune" in extra else {}))
        elif mode == "whole":
            model.compile()
        torch.cuda.reset_peak_memory_stats()
        for b in map(int, args.batches.split(",")):
            inputs = make_inputs(cfg, b)
            n_img, n_txt = inputs["img"].shape[1], inputs["txt"].shape[1]
            flops = mmdit_forward_flops(cfg, n_img, n_txt, b)
            t_first = time.time()
            with torch.no_grad():
                if "graph" in extra:
                    fn = capture_graph(model, inputs)
                else:
                    fn = lambda: model(**inputs)  # noqa: E731
                med, all_t = cuda_time(fn)
            row = dict(variant=variant, batch=b, tokens=n_img + n_txt, seconds=med, min=min(all_t),
                       max=max(all_t), tflops=flops / med / 1e12, first_call_and_timing_s=time.time() - t_first,
                       peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
            rows.append(row)
            print(f"{variant:22s} b={b} {med:.4f}s ({min(all_t):.4f}-{max(all_t):.4f}) "
                  f"{row['tflops']:.0f} TFLOP/s peak {row['peak_mem_gb']:.1f} GiB "
                  f"(first call + timing {row['first_call_and_timing_s']:.0f}s)", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2))
            del inputs
    # Kernel-time split of the last variant (the list ends with the fastest candidate).
    results["split_last_variant_b1"] = kernel_split(model, make_inputs(cfg, 1))
    print("kernel split of", variant, "b=1 (s):", results["split_last_variant_b1"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
