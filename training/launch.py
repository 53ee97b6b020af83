"""Launching training through torchx: `local_cwd` processes here, Volcano gang jobs on Kubernetes.

One AppDef for both: torchrun (the elastic agent) with `--max_restarts`, so a crashed worker brings the whole
group back and the trainer resumes from the newest complete checkpoint. torchx's own `dist.torchrun`
component has no max-restarts option, hence this component.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass

from torchx import specs

DEFAULT_IMAGE = "soraflow-train-gpu:latest"  # pinned by digest in the compiled pipeline (issue 6)


@dataclass
class LaunchSpec:
    recipe: str
    run_dir: str
    nnodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    cpu: int = 2
    mem_mb: int = 4096
    max_restarts: int = 3
    image: str = DEFAULT_IMAGE
    python: str = "python"
    overrides: dict | None = None
    env: dict | None = None
    mounts: list[str] | None = None
    rdzv_port: int = 29500


def train_app(spec: LaunchSpec) -> specs.AppDef:
    if spec.nnodes == 1:
        endpoint = "localhost:0"  # one agent: let it pick a free port
    else:
        endpoint = f"$${{{specs.macros.rank0_env}:=localhost}}:{spec.rdzv_port}"
    cmd = [
        spec.python, "-m", "torch.distributed.run",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", specs.macros.app_id,
        "--nnodes", str(spec.nnodes), "--nproc_per_node", str(spec.nproc_per_node),
        "--max_restarts", str(spec.max_restarts), "--tee", "3",
        "-m", "training.train", "--recipe", spec.recipe, "--run-dir", spec.run_dir,
    ]
    for key, value in (spec.overrides or {}).items():
        cmd += ["--override", f"{key}={json.dumps(value)}"]
    env = {"LOGLEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **(spec.env or {})}
    # Keep NVLink multicast off on shared hosts (see the device notes); harmless elsewhere.
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    # A fresh worker store per restart round. With the rendezvous store shared across rounds (the default),
    # keys a dead attempt wrote for extra process groups (e.g. the checkpoint writer's gloo group) are still
    # there and the restarted ranks connect to dead addresses (seen here: "Connection refused" on restart).
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    return specs.AppDef(
        name=f"soraflow-{spec.recipe}",
        roles=[
            specs.Role(
                name="trainer",
                image=spec.image,
                entrypoint="bash",
                args=["-c", " ".join(shlex.quote(c) if "$" not in c else c for c in cmd)],
                num_replicas=spec.nnodes,
                min_replicas=spec.nnodes,  # gang: all nodes or none
                resource=specs.Resource(cpu=spec.cpu, gpu=spec.gpus_per_node, memMB=spec.mem_mb),
                env=env,
                port_map={"c10d": spec.rdzv_port},
                max_retries=0,  # restarts are torchrun's job; a scheduler retry would double-count them
                mounts=specs.parse_mounts(spec.mounts) if spec.mounts else [],
            )
        ],
    )


def run_local(spec: LaunchSpec, log_dir: str | None = None, wait: bool = True):
    """Run on this machine through the `local_cwd` scheduler; returns the final torchx AppStatus."""
    from torchx.runner import get_runner

    spec = LaunchSpec(**{**spec.__dict__, "python": sys.executable})
    runner = get_runner()
    cfg = {"log_dir": log_dir} if log_dir else {}
    handle = runner.run(train_app(spec), scheduler="local_cwd", cfg=cfg)
    if not wait:
        return handle
    status = runner.wait(handle, wait_interval=1)
    return status


def kubernetes_dryrun(spec: LaunchSpec, queue: str = "default", namespace: str = "default"):
    """The Volcano job torchx would submit (no cluster contacted)."""
    from torchx.runner import get_runner

    # validate_spec=False: server-side validation needs a cluster; the spec itself is what we check offline.
    info = get_runner().dryrun(train_app(spec), "kubernetes",
                               cfg={"queue": queue, "namespace": namespace, "validate_spec": False})
    return info.request
