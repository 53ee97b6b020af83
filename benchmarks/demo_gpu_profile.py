"""The record of one `soraflow run --profile gpu` run: per-stage training figures, held-out checks, curves.

    python -m soraflow.cli run --profile gpu --out-dir RUN        # the run itself (one command)
    python benchmarks/demo_gpu_profile.py RUN --out demo-gpu-profile_h200_DATE.json [--png curves.png]

Reads what the run wrote (each training stage's `stage_metrics.json`: losses, held-out curve, goodput, the
step-time figures of training/goodput.py `step_time_breakdown`; the eval's `metrics.json`: the learning checks)
and writes one JSON, plus the loss and held-out curves as a PNG. Nothing here is measured: it only gathers.
"""

from __future__ import annotations

import argparse
import glob
import sys
import json
import os
import platform
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

ORDER = ("hunyuan_vae_train", "vae_train", "dit_stage1", "dit_stage2", "dit_stage3", "distill")


def stage_records(run: Path) -> dict:
    """The newest stage_metrics.json of each stage under RUN/runs (a resumed run may hold older folders)."""
    found: dict[str, tuple[float, dict]] = {}
    for path in glob.glob(str(run / "runs" / "**" / "stage_metrics.json"), recursive=True):
        doc = json.loads(Path(path).read_text())
        mtime = os.path.getmtime(path)
        if doc.get("stage") not in found or found[doc["stage"]][0] < mtime:
            cfg_path = Path(path).parent / "config.json"
            doc["config"] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            if (Path(path).parent / "goodput_events.jsonl").is_file():  # recomputed: the current definitions
                from soraflow.components.train_stage.stage import _figures

                doc["figures"] = _figures(Path(path).parent, doc.get("goodput") or {})
            found[doc["stage"]] = (mtime, doc)
    return {s: found[s][1] for s in ORDER if s in found}


def eval_record(run: Path) -> dict:
    paths = sorted(glob.glob(str(run / "pipeline-root" / "*" / "eval-component" / "results" / "metrics.json")),
                   key=os.path.getmtime)
    return json.loads(Path(paths[-1]).read_text()) if paths else {}


def summarise(run: Path, command: str, log_tail: str = "") -> dict:
    stages = stage_records(run)
    out = {"command": command, "run_dir": str(run), "machine": platform.node(), "stages": {}}
    try:
        import torch

        out["torch"] = torch.__version__
        out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - gathering also works where torch is absent
        pass
    for name, doc in stages.items():
        fig = doc.get("figures") or {}
        ho = doc.get("heldout") or []
        key = "psnr" if name in ("hunyuan_vae_train", "vae_train") else "fm_loss_mean"
        out["stages"][name] = {
            "recipe": doc.get("recipe"), "steps": doc.get("steps"), "final_loss": doc.get("final_loss"),
            "heldout": [{"step": e.get("step"), key: e.get(key)} for e in ho],
            "figures": fig,
            "batch": (doc.get("config") or {}).get("data", {}).get("bucket_config"),
        }
    ev = eval_record(run)
    out["learning_checks"] = (ev.get("learning") or {}).get("checks")
    out["eval_seconds"] = ev.get("seconds")
    out["log_tail"] = log_tail[-4000:]
    return out


def plot(record: dict, stages_full: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in ORDER if s in stages_full]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.6), squeeze=False)
    for i, name in enumerate(names):
        doc = stages_full[name]
        losses = doc.get("losses") or []
        ax = axes[0][i]
        if losses:
            ax.plot([s for s, _ in losses], [v for _, v in losses], lw=0.8)
        ax.set_title(f"{name}\n{doc.get('recipe')}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("training loss", fontsize=7)
        ax.set_yscale("log")
        key = "psnr" if name in ("hunyuan_vae_train", "vae_train") else "fm_loss_mean"
        ho = [(e["step"], e[key]) for e in doc.get("heldout") or [] if e.get(key) is not None]
        ax = axes[1][i]
        if ho:
            ax.plot([s for s, _ in ho], [v for _, v in ho], "o-", ms=3)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("held-out PSNR (dB)" if key == "psnr" else "held-out FM loss", fontsize=7)
        for a in axes[:, i]:
            a.tick_params(labelsize=6)
    fig.suptitle(f"soraflow run --profile gpu ({record.get('device', '')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the --out-dir of a `soraflow run --profile gpu` run")
    ap.add_argument("--out", required=True, help="JSON record to write")
    ap.add_argument("--png", help="loss / held-out curves")
    ap.add_argument("--command", default="python -m soraflow.cli run --profile gpu --out-dir RUN")
    ap.add_argument("--log", help="the run's log (its tail goes into the record)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    tail = Path(args.log).read_text(errors="replace") if args.log and Path(args.log).is_file() else ""
    record = summarise(run, args.command, tail)
    Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    if args.png:
        plot(record, stage_records(run), Path(args.png))
    print(json.dumps({s: {k: v.get("figures", {}).get(k) for k in ("steps", "step_seconds_mean", "mfu",
                                                                  "tokens_per_second", "data_wait_share",
                                                                  "ae_encode_share", "goodput_ratio")}
                      for s, v in record["stages"].items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
