"""The ColossalAI strategy (Booster + LowLevelZero stage 2) on CUDA next to FSDP2:

1. correctness: the tiny MMDiT, same init and batches, 6 optimizer steps in fp32: per-step losses of
   `colossalai` vs `fsdp2` vs `single` (one process, so ZeRO/FSDP sharding is trivial and the numbers must agree);
2. speed: the 6-block slice of the 11B model (2 double + 4 single blocks, 8448 + 512 tokens, bf16) forward +
   backward + optimizer step, ColossalAI vs FSDP2 (both with compiled blocks), median of 10 steps.

ColossalAI 0.5 pins torch<=2.5.1 and ships as an sdist with heavy imports (peft, accelerate, bitsandbytes), so it
is installed --no-deps next to the image's torch for this check.

Usage (CUDA): torchrun --nproc_per_node 1 benchmarks/check_colossalai_gpu.py --out colossalai.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import inputs as slice_inputs  # noqa: E402
from benchmarks.cuda_timing import cuda_time  # noqa: E402
from soraflow.models.mmdit import MMDiT, get_config, mmdit_forward_flops  # noqa: E402
from soraflow.training.parallel.mmdit import set_sdpa_backend  # noqa: E402
from soraflow.training.strategies import OptimConfig, build_strategy  # noqa: E402


def tiny_batch(cfg, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    b, t, h, w, n_txt = 2, 3, 8, 8, 6
    n = t * (h // 2) * (w // 2)
    from soraflow.models.packing import image_position_ids, text_position_ids

    x = dict(img=torch.randn(b, n, cfg.in_channels, generator=g), txt=torch.randn(b, n_txt, cfg.context_in_dim,
                                                                                  generator=g),
             timesteps=torch.rand(b, generator=g), y_vec=torch.randn(b, cfg.vec_in_dim, generator=g),
             cond=torch.randn(b, n, cfg.cond_channels, generator=g))
    x = {k: v.to(device) for k, v in x.items()}
    x["img_ids"] = image_position_ids(b, t, h, w, 2, device=device)
    x["txt_ids"] = text_position_ids(b, n_txt, device=device)
    target = torch.randn(b, n, cfg.in_channels, generator=g).to(device)
    return x, target


def losses_for(strategy_name: str, steps: int = 6) -> list[float]:
    device = torch.device("cuda")
    cfg = get_config("tiny")
    torch.manual_seed(0)
    strategy = build_strategy(strategy_name, param_dtype="fp32")
    model, opt = strategy.prepare(MMDiT(cfg), device, OptimConfig(lr=1e-3, eps=1e-8))
    out = []
    for step in range(steps):
        x, target = tiny_batch(cfg, step, device)
        loss = torch.nn.functional.mse_loss(model(**x).float(), target)
        strategy.backward(loss, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(loss))
    return out


def slice_step_time(strategy_name: str) -> dict:
    cfg = get_config("opensora2-11b", depth=2, depth_single_blocks=4)
    x = slice_inputs(cfg)
    torch.manual_seed(0)
    torch._dynamo.reset()
    if strategy_name == "fsdp2":
        from soraflow.training.strategies import FSDP2Strategy

        strategy = FSDP2Strategy("bf16", "fp32", reshard_after_forward=False)
    else:
        strategy = build_strategy(strategy_name, param_dtype="bf16")
    model, opt = strategy.prepare(MMDiT(cfg), torch.device("cuda"), OptimConfig(lr=1e-5))
    inner = strategy.unwrap(model)
    for block in list(inner.double_blocks) + list(inner.single_blocks):
        block.compile()
    target = torch.randn_like(x["img"], dtype=torch.float32)

    def step():
        loss = torch.nn.functional.mse_loss(model(**x).float(), target)
        strategy.backward(loss, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    med, times = cuda_time(step, warmup=3, iters=10)
    flops = 3 * mmdit_forward_flops(cfg, x["img"].shape[1], x["txt"].shape[1])
    row = {"strategy": strategy_name, "step_with_optimizer_s": med, "min_s": min(times), "max_s": max(times),
           "tflops_fwd_bwd_equiv": flops / med / 1e12, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    del model, opt
    torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=int(os.environ.get("RANK", 0)),
                                world_size=int(os.environ.get("WORLD_SIZE", 1)))
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    set_sdpa_backend("cudnn")
    import colossalai

    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "colossalai": getattr(colossalai, "__version__", "?"), "world_size": dist.get_world_size()}
    res["losses"] = {name: losses_for(name) for name in ("single", "fsdp2", "colossalai")}
    ref = res["losses"]["single"]
    res["max_abs_loss_diff_vs_single"] = {k: max(abs(a - b) for a, b in zip(v, ref)) for k, v in res["losses"].items()}
    print(json.dumps({"losses": res["losses"], "diff": res["max_abs_loss_diff_vs_single"]}, indent=1), flush=True)
    if not args.skip_speed:
        res["speed"] = [slice_step_time(name) for name in ("fsdp2", "colossalai")]
        for row in res["speed"]:
            print(json.dumps(row), flush=True)
    if args.out and dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(res, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
