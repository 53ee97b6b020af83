"""A bf16 FSDP2 recipe run as one process on one GPU: the trainer runs it as "master" (FSDP2's precision on one
rank: bf16 compute parameters, fp32 master weights in the state dict) and compiles the blocks when the recipe
says so; compiled losses follow eager ones.

Usage (CUDA): SORAFLOW_CACHE=<dir with tiny-text-encoders/> python benchmarks/check_one_gpu_training.py --out c.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soraflow.training.config import apply_overrides  # noqa: E402
from soraflow.training.data.fixtures import make_video_table  # noqa: E402
from soraflow.training.recipes import get_recipe  # noqa: E402
from soraflow.training.trainer import Trainer  # noqa: E402


def run(table: str, run_dir: Path, compile_model: bool, steps: int = 6) -> dict:
    cfg = apply_overrides(get_recipe("tiny-cpu-stage1"), {
        "data.table": table, "run_dir": str(run_dir), "checkpoint.dir": str(run_dir / "ckpt"), "max_steps": steps,
        "parallel.param_dtype": "bf16", "model.compile": compile_model, "checkpoint.ckpt_every": 100})
    trainer = Trainer(cfg)
    info = {"strategy": trainer.strategy.name,
            "param_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters()}),
            "state_dict_dtypes": sorted({str(v.dtype) for v in trainer.model.state_dict().values()}),
            "compiled_blocks": all(getattr(b, "_compiled_call_impl", None) is not None
                                   for b in trainer.strategy.unwrap(trainer.model).double_blocks)}
    trainer.train()
    trainer.close()
    losses = {}
    for line in (run_dir / "goodput_events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev.get("ev") == "step":
            losses[ev["step"]] = ev["loss"]
    info["losses"] = [losses[s] for s in sorted(losses)]
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="one-gpu-"))
    specs = [{"kind": "video", "num_frames": 24, "height": 64, "width": 64, "fps": 24, "text": f"clip {i}"}
             for i in range(8)]
    table = str(make_video_table(work / "clips", specs))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    res = {"device": device, "torch": torch.__version__}
    for name, compiled in (("eager", False), ("compiled", True)):
        print(f"--- {name} run", flush=True)
        res[name] = run(table, work / name, compiled)
    e, c = res["eager"]["losses"], res["compiled"]["losses"]
    res["max_rel_loss_diff"] = max(abs(a - b) / abs(a) for a, b in zip(e, c))
    print(json.dumps(res, indent=2))
    ok = (res["compiled"]["strategy"] == "master" and res["compiled"]["param_dtypes"] == ["torch.bfloat16"]
          and res["compiled"]["state_dict_dtypes"] == ["torch.float32"] and res["compiled"]["compiled_blocks"]
          and len(e) == len(c) == 6 and res["max_rel_loss_diff"] < 2e-2)
    res["ok"] = ok
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
