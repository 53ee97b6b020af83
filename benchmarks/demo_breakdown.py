"""Where `make demo`'s pipeline spends its time: per KFP task wall and CPU (user+sys of the task's whole process
tree), and inside each training stage the trainer's own accounting (goodput events: init, data loading, steps,
held-out evaluation, checkpoints), so process start-up and runner overhead show as the remainder.

    PYTHONPATH=$PWD python benchmarks/demo_breakdown.py --out-dir /tmp/dd --json benchmarks/demo-wall-breakdown_...json

CPU is measured as the growth of this process's RUSAGE_CHILDREN around each task: KFP's local runner runs one
task at a time and waits for it, and every task waits for its own children (torchrun, the trainer), so the
delta is exactly that task's tree. On a machine shared with other jobs, CPU seconds are the comparable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def stage_breakdown(run_dir: Path) -> dict:
    """The trainer's accounting of one stage's run folder (the last attempt)."""
    events = [json.loads(line) for line in (run_dir / "goodput_events.jsonl").read_text().splitlines() if line]
    start = max((e for e in events if e["ev"] == "attempt_start"), key=lambda e: e["t"])
    events = [e for e in events if e["t"] >= start["t"]]
    end = next((e["t"] for e in events if e["ev"] == "attempt_end"), events[-1]["t"])
    out = {"attempt_s": round(end - start["t"], 2), "steps": 0, "step_s": 0.0}
    for e in events:
        if e["ev"] == "step":
            out["steps"] += 1
            out["step_s"] += e["seconds"]
        elif e["ev"] == "badput":
            out[f"{e['kind']}_s"] = out.get(f"{e['kind']}_s", 0.0) + e["seconds"]
    heldout = run_dir / "heldout.jsonl"
    if heldout.is_file():
        out["heldout_evals_s"] = sum(json.loads(x)["seconds"] for x in heldout.read_text().splitlines() if x)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()

    import kfp.local.subprocess_task_handler as sth

    tasks = []
    original = sth.run_local_subprocess

    def timed(full_command, env_vars=None):
        text = " ".join(full_command)
        # the task's own output file (input artifacts name the upstream tasks' folders)
        m = re.search(r'"outputFile":\s*"[^"]*/([\w-]+)/executor_output\.json"', text)
        name = m.group(1) if m else "?"
        t0, c0, l0 = time.time(), _cpu(), _loadavg()[0]
        rc = original(full_command, env_vars)
        tasks.append({"task": name, "wall_s": round(time.time() - t0, 2), "cpu_s": round(_cpu() - c0, 2),
                      "load1_start": l0, "load1_end": _loadavg()[0], "rc": rc})
        return rc

    sth.run_local_subprocess = timed
    from soraflow.pipelines.local_run import run_pipeline_locally

    t0, c0, s0, load0 = time.time(), _cpu(), _self_cpu(), _loadavg()
    run = run_pipeline_locally(args.out_dir)
    wall, cpu_children, cpu_self = time.time() - t0, _cpu() - c0, _self_cpu() - s0
    stages = {}
    for folder in sorted((Path(args.out_dir) / "runs" / "local").iterdir()):
        if (folder / "goodput_events.jsonl").is_file():
            stages[folder.name.rsplit("-", 1)[0]] = stage_breakdown(folder)
    eval_doc = json.loads((run.outputs["eval_results"] / "metrics.json").read_text())
    learning = eval_doc.get("learning") or {}
    record = {
        "what": "make demo's pipeline (soraflow run) broken down per KFP task: wall, CPU of the task's process tree, "
                "and the trainer's own accounting inside each training stage",
        "command": "PYTHONPATH=$PWD python benchmarks/demo_breakdown.py --out-dir OUT --json THIS",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True).stdout.strip()),
        "machine": f"{os.cpu_count()} CPU cores, shared (load average at start {load0}, at end {_loadavg()})",
        "pipeline": {"wall_s": round(wall, 1), "cpu_tasks_s": round(cpu_children, 1),
                     "cpu_driver_s": round(cpu_self, 1)},
        "tasks": tasks,
        "stages": stages,
        "eval_seconds": {**eval_doc["run"].get("seconds", {}),
                         "learning_parts": learning.get("seconds")},
        "gates_passed": learning.get("passed"),
        "checks": [{k: c[k] for k in ("check", "value", "threshold", "passed", "role")}
                   for c in learning.get("checks", [])],
    }
    text = json.dumps(record, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if learning.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
