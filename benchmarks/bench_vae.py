"""HunyuanVideo VAE (full size, random weights) encode/decode of a 256x256x129 video on one GPU, bf16.

Usage: python benchmarks/bench_vae.py --out vae.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import cuda_time  # noqa: E402
from soraflow.models.hunyuan_vae import HunyuanVideoVAE  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--frames", type=int, default=129)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "frames": args.frames, "size": args.size, "rows": []}
    vae = HunyuanVideoVAE().to(device="cuda", dtype=torch.bfloat16).eval().requires_grad_(False)
    t_lat = (args.frames - 1) // 4 + 1
    z = torch.randn(1, 16, t_lat, args.size // 8, args.size // 8, device="cuda", dtype=torch.bfloat16)
    x = torch.rand(1, 3, args.frames, args.size, args.size, device="cuda", dtype=torch.bfloat16) * 2 - 1
    for bench in ("decode", "encode"):
        for cudnn_benchmark in (False, True):
            torch.backends.cudnn.benchmark = cudnn_benchmark
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                fn = (lambda: vae.decode(z)) if bench == "decode" else (lambda: vae.encode(x))
                med, all_t = cuda_time(fn, warmup=1, iters=3)
            row = dict(op=bench, cudnn_benchmark=cudnn_benchmark, seconds=med, all=all_t,
                       peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
            res["rows"].append(row)
            print(f"{bench} cudnn.benchmark={cudnn_benchmark}: {med:.3f}s peak {row['peak_mem_gb']:.1f} GiB", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
