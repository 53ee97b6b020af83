"""Training step of a 6-block slice of the 11B MMDiT (2 double + 4 single blocks, width 3072), 8448 + 512 tokens,
batch 1, bf16 compute, FSDP2 on one GPU; then the async checkpoint of that model and how long it stalls training.

Usage (CUDA): python benchmarks/bench_train_step.py --out train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cuda_timing import cuda_time as time_steps  # noqa: E402
from soraflow.models.mmdit import MMDiT, get_config, mmdit_forward_flops  # noqa: E402
from soraflow.training.parallel.mmdit import apply_compile, set_sdpa_backend  # noqa: E402
from soraflow.models.packing import image_position_ids, text_position_ids  # noqa: E402
from soraflow.training.strategies import FSDP2Strategy, OptimConfig  # noqa: E402


def inputs(cfg, b=1, t=33, h=32, w=32, n_txt=512):
    dev, dt = "cuda", torch.bfloat16
    n = t * (h // 2) * (w // 2)
    return dict(img=torch.randn(b, n, cfg.in_channels, device=dev, dtype=dt),
                img_ids=image_position_ids(b, t, h, w, 2, device=dev, dtype=dt),
                txt=torch.randn(b, n_txt, cfg.context_in_dim, device=dev, dtype=dt),
                txt_ids=text_position_ids(b, n_txt, device=dev, dtype=dt),
                timesteps=torch.full((b,), 0.5, device=dev, dtype=dt),
                y_vec=torch.randn(b, cfg.vec_in_dim, device=dev, dtype=dt),
                cond=torch.randn(b, n, cfg.cond_channels, device=dev, dtype=dt))


def matmul_ceiling_tflops(n: int = 8192) -> float:
    """This GPU's bf16 matmul rate at n³ (design.md §7's ceiling: 765 TFLOP/s on the reference H100). H100s
    differ by 10-15% in sustained clocks, so step times are also given scaled to the reference ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    med, _ = time_steps(lambda: a @ b, warmup=5, iters=20)
    return 2 * n**3 / med / 1e12


REFERENCE_CEILING_TFLOPS = 765.0  # design.md §7, the machine the 0.124 s reference step was measured on


def setup_slice(port: int):
    """One-GPU NCCL group, the 6-block slice's config and inputs, its forward+backward FLOPs, a result record."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    set_sdpa_backend("cudnn")
    cfg = get_config("opensora2-11b", depth=2, depth_single_blocks=4)
    x = inputs(cfg)
    flops = 3 * mmdit_forward_flops(cfg, x["img"].shape[1], x["txt"].shape[1])
    ceiling = matmul_ceiling_tflops()
    print(f"bf16 matmul ceiling here: {ceiling:.0f} TFLOP/s (reference machine {REFERENCE_CEILING_TFLOPS:.0f})",
          flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fwd_bwd_flops": flops,
           "matmul_ceiling_tflops": ceiling, "reference_ceiling_tflops": REFERENCE_CEILING_TFLOPS, "rows": []}
    return cfg, x, flops, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--variants", default="eager,compiled")
    ap.add_argument("--skip-checkpoint", action="store_true")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (the first one compiles)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--reserve-gib", type=float, default=0.0,
                    help="allocate this much GPU memory before timing (tests the allocator-layout explanation)")
    ap.add_argument("--adamw-steps-first", type=int, default=3,
                    help="whole steps (with the AdamW update) before timing forward+backward")
    ap.add_argument("--first-lr", type=float, default=1e-5, help="learning rate of those steps")
    args = ap.parse_args()
    cfg, x, flops, res = setup_slice(29512)
    model = opt = mgr = None
    for variant in args.variants.split(","):  # eager | compiled, optionally "-flash" for the SDPA flash kernels
        set_sdpa_backend("flash" if variant.endswith("-flash") else "cudnn")
        del model, opt
        torch.cuda.empty_cache()
        torch._dynamo.reset()
        torch.manual_seed(0)
        strategy = FSDP2Strategy("bf16", "fp32", reshard_after_forward=False)
        model, opt = strategy.prepare(MMDiT(cfg), torch.device("cuda"), OptimConfig(lr=1e-5))
        if variant.startswith("compiled"):
            apply_compile(model)
        target = torch.randn_like(x["img"], dtype=torch.float32)

        def fwd_bwd():  # gradients start from None, as after the trainer's zero_grad(set_to_none=True)
            opt.zero_grad(set_to_none=True)
            out = model(**x)
            torch.nn.functional.mse_loss(out.float(), target).backward()

        def full_step():
            fwd_bwd()
            if mgr is not None:
                mgr.wait_staging()  # as the trainer does: the checkpoint copy must finish before the update
            opt.step()
            opt.zero_grad(set_to_none=True)

        for group in opt.param_groups:
            group["lr"] = args.first_lr
        for _ in range(args.adamw_steps_first):  # the steady state of training: updates between the steps
            full_step()
        reserve = torch.empty(int(args.reserve_gib * 2**30), dtype=torch.uint8, device="cuda")  # noqa: F841
        torch.cuda.reset_peak_memory_stats()
        med, all_t = time_steps(fwd_bwd, warmup=args.warmup, iters=args.iters)
        med_step, _ = time_steps(full_step, warmup=1, iters=5)
        row = dict(variant=variant, reserve_gib=args.reserve_gib, adamw_steps_first=args.adamw_steps_first, first_lr=args.first_lr, fwd_bwd_s=med, min=min(all_t), max=max(all_t), tflops=flops / med / 1e12,
                   step_with_adamw_s=med_step, peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
        res["rows"].append(row)
        print(f"{variant:9s} fwd+bwd {med:.4f}s ({min(all_t):.4f}-{max(all_t):.4f}) {row['tflops']:.0f} TFLOP/s; "
              f"with AdamW step {med_step:.4f}s; peak {row['peak_mem_gb']:.1f} GiB", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))

    if not args.skip_checkpoint:
        from soraflow.training.checkpoint import CheckpointManager

        class Wrapped:
            def state_dict(self_inner):
                return strategy.state_dict(model, opt)

            def load_state_dict(self_inner, sd):
                strategy.load_state_dict(model, opt, sd)

        root = tempfile.mkdtemp(prefix="ckpt-bench-")
        mgr = CheckpointManager(root, keep_n_latest=2, async_save=True)
        
        full_step()
        torch.cuda.synchronize()
        t_pin = time.perf_counter()
        mgr.prepare_staging({"train": Wrapped()})  # what the trainer does after its first step
        print(f"pinned staging buffers prepared in {time.perf_counter() - t_pin:.1f}s", flush=True)
        base, _ = time_steps(full_step, warmup=1, iters=5)
        stalls = []
        for k in range(3):
            t0 = time.perf_counter()
            mgr.save(k + 1, {"train": Wrapped()}, metadata={"dp_size": 1, "data_revision": "bench"})
            blocking = time.perf_counter() - t0
            t1 = time.perf_counter()
            full_step()  # the step right after a save: waits for staging before the optimizer update
            torch.cuda.synchronize()
            first = time.perf_counter() - t1
            t1 = time.perf_counter()
            for _ in range(4):  # training continues while the write finishes
                full_step()
            torch.cuda.synchronize()
            during = (time.perf_counter() - t1) / 4
            t2 = time.perf_counter()
            mgr.wait()
            tail = time.perf_counter() - t2
            stalls.append(dict(blocking_s=blocking, first_step_after_save_s=first, step_during_save_s=during,
                               wait_after_5_steps_s=tail, stall_s=blocking + first - base))
            print(f"async save {k + 1}: blocking {blocking:.3f}s; first step {first:.4f}s; stall "
                  f"{blocking + first - base:.3f}s; later steps during save {during:.4f}s "
                  f"(baseline {base:.4f}s); remaining wait {tail:.3f}s", flush=True)
        size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
        res["checkpoint"] = dict(baseline_step_s=base, saves=stalls, bytes_on_disk=size)
        print(f"checkpoint bytes on disk (2 kept): {size / 2**30:.1f} GiB", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
