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

DEFAULT_IMAGE = "soraflow-gpu:dev"  # pipelines pass the digest-pinned image of pipelines/settings.py
METRICS_PORT = 9464  # the trainer's exporter port by convention (monitoring/README.md)


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
    # The whole config is resolved and validated here, in the launching process: a typo or a wrong type fails
    # before torchrun or a cluster job starts, and every worker runs exactly this config.
    from soraflow.training.config import resolve

    cfg = resolve(spec.recipe, spec.overrides, run_dir=spec.run_dir)
    cmd = [
        spec.python, "-m", "torch.distributed.run",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", specs.macros.app_id,
        "--nnodes", str(spec.nnodes), "--nproc_per_node", str(spec.nproc_per_node),
        "--max_restarts", str(spec.max_restarts), "--tee", "3",
        "-m", "soraflow.training.train", "--config-json", json.dumps(cfg.to_dict(), sort_keys=True, default=str),
    ]
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
                # the endpoint holds a shell expansion (rank 0's host); everything else is quoted
                args=["-c", " ".join(c if c is endpoint else shlex.quote(c) for c in cmd)],
                num_replicas=spec.nnodes,
                min_replicas=spec.nnodes,  # gang: all nodes or none
                resource=specs.Resource(cpu=spec.cpu, gpu=spec.gpus_per_node, memMB=spec.mem_mb),
                env=env,
                port_map={"c10d": spec.rdzv_port, "metrics": METRICS_PORT},
                max_retries=0,  # restarts are torchrun's job; a scheduler retry would double-count them
                mounts=specs.parse_mounts(spec.mounts) if spec.mounts else [],
            )
        ],
    )


def cpu_thread_env(nproc: int = 1, environ=None) -> dict:
    """Thread settings for CPU processes on a shared machine (docs/cpu-threads.md): one OpenMP thread per
    core this process may use, divided among `nproc` workers, and idle OpenMP threads that sleep instead of
    spinning. With libgomp's default (spin), a 2-thread tiny-model step on 2 cores shared with other jobs took
    20x longer than with one thread (10 s against 0.5 s); with PASSIVE it matches one thread there and keeps the
    second core when it is free. Values already in the environment win."""
    import os

    environ = os.environ if environ is None else environ
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = {"OMP_NUM_THREADS": str(max(1, cores // max(1, nproc))), "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: v for k, v in wanted.items() if k not in environ}


STEP_LINE = r"step \d+ loss"  # what the trainer's rank 0 logs every `log_every` steps


def _follow_steps(runner, handle, progress) -> None:
    """Pass rank 0's step lines to `progress` while the job runs (best effort: logs are a convenience)."""
    try:
        for line in runner.log_lines(handle, "trainer", k=0, regex=STEP_LINE, should_tail=True):
            progress(line.rstrip("\n"))
    except Exception:  # noqa: BLE001 - a log that cannot be followed never fails the run
        pass


def run_local(spec: LaunchSpec, log_dir: str | None = None, wait: bool = True, progress=None):
    """Run on this machine through the `local_cwd` scheduler; returns the final torchx AppStatus.
    `progress(line)` (e.g. print to stderr) gets each step line of rank 0 as it is logged."""
    import threading

    from torchx.runner import get_runner

    # local processes share this machine's cores: bounded threads that do not spin (cpu_thread_env)
    env = {**cpu_thread_env(spec.nproc_per_node), **(spec.env or {})}
    spec = LaunchSpec(**{**spec.__dict__, "python": sys.executable, "env": env})
    runner = get_runner()
    cfg = {"log_dir": log_dir} if log_dir else {}
    handle = runner.run(train_app(spec), scheduler="local_cwd", cfg=cfg)
    if not wait:
        return handle
    follower = None
    if progress is not None and log_dir:
        follower = threading.Thread(target=_follow_steps, args=(runner, handle, progress), daemon=True)
        follower.start()
    status = runner.wait(handle, wait_interval=0.2)  # a status poll is cheap; each second here is a second of every stage
    if follower is not None:
        follower.join(timeout=5)  # the tail ends with the job; never wait long for it
    return status


# What one GPU's share of a training pod needs: dataloader workers decode video (Open-Sora runs 12 a rank) and
# pinned staging buffers hold checkpoint copies. An 8-GPU pod asks for 96 CPUs and 1200 GiB, which fits the
# H100/H200 machine types the Terraform pools use (208-224 vCPU, 1872-2952 GB).
CPU_PER_GPU = 12
MEM_MB_PER_GPU = 150 * 1024
# Set on the launcher task by the pipeline (pipelines/dag.py): the volume that holds data, checkpoints and run
# folders, so the training pods see the same paths as the launcher.
DATA_PVC_ENV, DATA_MOUNT_ENV = "SORAFLOW_DATA_PVC", "SORAFLOW_DATA_MOUNT"


def for_cluster(spec: LaunchSpec, environ=None) -> LaunchSpec:
    """What a cluster job adds: rank 0's Prometheus exporter on the pod port named `metrics` (the PodMonitor in
    monitoring/k8s scrapes it), bound to all interfaces, kept up briefly after the run for a last scrape; CPU
    and memory sized for the pod's GPUs; the pipeline's data volume mounted at the launcher's path."""
    import os

    environ = os.environ if environ is None else environ
    env = {"SORAFLOW_METRICS_ADDR": "0.0.0.0", "SORAFLOW_METRICS_LINGER_S": "30", **(spec.env or {})}
    overrides = {"metrics_port": METRICS_PORT, **(spec.overrides or {})}
    gpus = max(0, spec.gpus_per_node)
    mounts = list(spec.mounts or [])
    pvc, mount = environ.get(DATA_PVC_ENV), environ.get(DATA_MOUNT_ENV)
    if pvc and mount and f"dst={mount}" not in mounts:
        mounts += ["type=volume", f"src={pvc}", f"dst={mount}"]  # torchx's mount tokens
    return LaunchSpec(**{**spec.__dict__, "env": env, "overrides": overrides, "mounts": mounts or None,
                         "cpu": max(spec.cpu, CPU_PER_GPU * gpus), "mem_mb": max(spec.mem_mb, MEM_MB_PER_GPU * gpus)})


def kubernetes_dryrun(spec: LaunchSpec, queue: str = "default", namespace: str = "default"):
    """The Volcano job torchx would submit (no cluster contacted)."""
    from torchx.runner import get_runner

    # validate_spec=False: server-side validation needs a cluster; the spec itself is what we check offline.
    info = get_runner().dryrun(train_app(for_cluster(spec)), "kubernetes",
                               cfg={"queue": queue, "namespace": namespace, "validate_spec": False})
    return info.request


IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def cluster_job_name(run_id: str, stage: str) -> str:
    """The Volcano job's name for one pipeline run's stage: the same on every attempt, so a retried launcher
    finds the job it submitted before. DNS-1123, at most 52 characters (Volcano derives pod names from it)."""
    import hashlib
    import re

    base = re.sub(r"[^a-z0-9-]+", "-", f"soraflow-{stage}-{run_id}".lower()).strip("-")
    if len(base) > 52:  # keep it readable and unique: a prefix and a digest of the whole
        base = f"{base[:43].rstrip('-')}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"
    return base


def _named_request(info, job_name: str):
    """The dry run's Volcano job with torchx's random app id replaced by `job_name` everywhere (job, pod labels,
    the rendezvous id), as a plain dict the API takes."""
    from kubernetes.client import ApiClient

    resource = ApiClient().sanitize_for_serialization(info.request.resource)
    generated = resource["metadata"]["name"]
    resource = json.loads(json.dumps(resource).replace(generated, job_name))
    resource["metadata"].setdefault("labels", {})["soraflow.io/job"] = job_name  # `kubectl get vcjob -l ...`
    info.request.resource = resource
    return info


def run_kubernetes(spec: LaunchSpec, queue: str = "default", namespace: str | None = None, log=print,
                   job_name: str | None = None, runner=None):
    """Submit the Volcano gang job, stream rank 0's log through `log`, wait; returns the final AppStatus.

    With `job_name` (`cluster_job_name(run_id, stage)`) a retried launcher is safe: when that job already
    exists and is still running, it is followed rather than submitted a second time; one that ended without
    success is deleted and submitted again (the trainer resumes from its last checkpoint on the volume).
    Runs where a kubeconfig or in-cluster service account allows creating `batch.volcano.sh` jobs (the pipeline
    runner's role in infra/gitops/cluster). The namespace defaults to the calling pod's own, where the data
    volume claim the job mounts lives."""
    import os
    import time

    from torchx.runner import get_runner
    from torchx.specs import AppState, make_app_handle

    if namespace is None:
        namespace = open(IN_CLUSTER_NAMESPACE).read().strip() if os.path.exists(IN_CLUSTER_NAMESPACE) else "default"
    runner = runner or get_runner()
    cfg = {"queue": queue, "namespace": namespace}
    if job_name is None:
        handle = runner.run(train_app(for_cluster(spec)), scheduler="kubernetes", cfg=cfg)
        log(f"submitted {handle}")
    else:
        handle = make_app_handle("kubernetes", runner._name, f"{namespace}:{job_name}")
        status = runner.status(handle)
        if status is not None and status.state in (AppState.FAILED, AppState.CANCELLED, AppState.UNKNOWN):
            log(f"{job_name} ended {status.state.name} on an earlier attempt: deleting it to submit again")
            runner.delete(handle)
            for _ in range(60):  # the API removes it asynchronously
                if runner.status(handle) is None:
                    break
                time.sleep(5)
            status = None
        if status is None:
            runner.schedule(_named_request(runner.dryrun(train_app(for_cluster(spec)), "kubernetes", cfg=cfg),
                                           job_name))
            log(f"submitted {handle}")
        else:
            log(f"following {handle}, submitted by an earlier attempt ({status.state.name})")
    with _cancel_job_on_termination(runner, handle, log):
        try:
            for line in runner.log_lines(handle, "trainer", k=0, should_tail=True):
                log(line.rstrip("\n"))
        except Exception as exc:  # logs are a convenience; the job's state decides the outcome
            log(f"log streaming stopped: {exc}")
        return runner.wait(handle, wait_interval=10)


class _Terminated(SystemExit):
    pass


def _cancel_job_on_termination(runner, handle, log):
    """While the launcher follows its job, SIGTERM/SIGINT (a cancelled KFP run stops its pods so) cancel the
    Volcano job first, so no GPU job outlives its pipeline run. An evicted launcher is stopped the same way; its
    retry then finds the job cancelled and submits it again, resuming from the last checkpoint."""
    import contextlib
    import signal
    import threading

    @contextlib.contextmanager
    def guard():
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def cancel(signum, _frame):
            log(f"launcher got signal {signum}: cancelling {handle}")
            try:
                runner.cancel(handle)
            finally:
                raise _Terminated(128 + signum)

        previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    return guard()
