"""Cluster launches that are safe to retry, and training pods that can work: names, volumes, resources."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes.client import ApiClient
from torchx.specs import AppState, AppStatus

from soraflow.training.launch import (DATA_MOUNT_ENV, DATA_PVC_ENV, LaunchSpec, _named_request, cluster_job_name,
                             for_cluster, kubernetes_dryrun, run_kubernetes)

SPEC = LaunchSpec(recipe="stage1-256px-h200x8", run_dir="/mnt/soraflow/runs/r1/dit_stage1", nnodes=2,
                  nproc_per_node=8, gpus_per_node=8)
ENV = {DATA_PVC_ENV: "soraflow-data", DATA_MOUNT_ENV: "/mnt/soraflow"}


def test_job_name_is_deterministic_and_dns_safe():
    a = cluster_job_name("0f8e4c2a-1b2c-4d5e-8f90-123456789abc", "dit_stage1")
    assert a == cluster_job_name("0f8e4c2a-1b2c-4d5e-8f90-123456789abc", "dit_stage1")
    assert a != cluster_job_name("0f8e4c2a-1b2c-4d5e-8f90-123456789abc", "dit_stage2")
    long = cluster_job_name("x" * 200, "distill")
    for name in (a, long):
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) and len(name) <= 52, name
    assert long != cluster_job_name("x" * 199 + "y", "distill")


def test_training_pods_mount_the_pipeline_volume_and_are_sized_for_their_gpus():
    spec = for_cluster(SPEC, environ=ENV)
    assert spec.cpu == 96 and spec.mem_mb == 8 * 150 * 1024
    job = ApiClient().sanitize_for_serialization(
        kubernetes_dryrun(LaunchSpec(**{**SPEC.__dict__, "mounts": spec.mounts})).resource)
    pod = job["spec"]["tasks"][0]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert claims[mounts["/mnt/soraflow"]] == "soraflow-data"  # checkpoints land where the launcher looks
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8" and limits["cpu"] == "96000m"
    # without the pipeline's volume (a plain `soraflow train` dry run) nothing is invented
    assert for_cluster(SPEC, environ={}).mounts is None


def test_named_request_leaves_no_random_id():
    from torchx.runner import get_runner

    from soraflow.training.launch import train_app

    info = get_runner().dryrun(train_app(SPEC), "kubernetes",
                               cfg={"queue": "q", "namespace": "ns", "validate_spec": False})
    generated = info.request.resource["metadata"]["name"]
    named = _named_request(info, "soraflow-dit-stage1-abc").request.resource
    text = json.dumps(named)
    assert generated not in text and named["metadata"]["name"] == "soraflow-dit-stage1-abc"
    assert named["metadata"]["labels"]["soraflow.io/job"] == "soraflow-dit-stage1-abc"


class _Runner:
    """torchx Runner's job calls, over a dict of jobs by handle (no cluster here)."""

    _name = "torchx"

    def __init__(self, jobs):
        self.jobs, self.calls = jobs, []

    def status(self, handle):
        state = self.jobs.get(handle)
        return None if state is None else AppStatus(state)

    def delete(self, handle):
        self.calls.append("delete")
        self.jobs.pop(handle)

    def dryrun(self, app, scheduler, cfg):
        from torchx.runner import get_runner

        return get_runner().dryrun(app, scheduler, cfg={**cfg, "validate_spec": False})

    def schedule(self, info):
        self.calls.append("schedule")
        handle = f"kubernetes://torchx/ns:{info.request.resource['metadata']['name']}"
        self.jobs[handle] = AppState.RUNNING
        return handle

    def log_lines(self, handle, role, k=0, should_tail=False):
        return iter(["step 1 loss 1.0\n"])

    def wait(self, handle, wait_interval=10):
        self.jobs[handle] = {AppState.RUNNING: AppState.SUCCEEDED}.get(self.jobs[handle], self.jobs[handle])
        return AppStatus(self.jobs[handle])


@pytest.mark.parametrize("earlier, calls, final", [
    (None, ["schedule"], AppState.SUCCEEDED),  # first attempt: submit
    (AppState.RUNNING, [], AppState.SUCCEEDED),  # the launcher pod was evicted: follow the running job
    (AppState.SUCCEEDED, [], AppState.SUCCEEDED),  # the job finished while no launcher watched
    (AppState.FAILED, ["delete", "schedule"], AppState.SUCCEEDED),  # a failed job is replaced (resumes)
])
def test_a_retried_launcher_follows_or_replaces_its_job(earlier, calls, final):
    name = cluster_job_name("run-1", "dit_stage1")
    handle = f"kubernetes://torchx/ns:{name}"
    runner = _Runner({handle: earlier} if earlier is not None else {})
    lines = []
    status = run_kubernetes(SPEC, namespace="ns", log=lines.append, job_name=name, runner=runner)
    assert runner.calls == calls and status.state == final
    assert list(runner.jobs) == [handle]  # never a second job for the same run and stage
    assert any("step 1 loss" in line for line in lines)


def test_a_stopped_launcher_cancels_its_job():
    """SIGTERM while following (a cancelled pipeline run stops the launcher pod so): the job is cancelled
    before the launcher exits, so it cannot keep holding GPUs."""
    import os
    import signal

    name = cluster_job_name("run-2", "dit_stage3")
    handle = f"kubernetes://torchx/ns:{name}"

    class Stopped(_Runner):
        def log_lines(self, handle, role, k=0, should_tail=False):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the log is followed
            return iter([])

        def cancel(self, handle):
            self.calls.append("cancel")
            self.jobs[handle] = AppState.CANCELLED

    runner = Stopped({})
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        run_kubernetes(SPEC, namespace="ns", log=lambda line: None, job_name=name, runner=runner)
    assert stop.value.code == 128 + signal.SIGTERM
    assert runner.calls == ["schedule", "cancel"] and runner.jobs[handle] == AppState.CANCELLED
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher's own handler is restored
    # the retried launcher then replaces the cancelled job (the trainer resumes from its checkpoint)
    retry = _Runner(dict(runner.jobs))
    assert run_kubernetes(SPEC, namespace="ns", log=lambda line: None, job_name=name,
                          runner=retry).state == AppState.SUCCEEDED
    assert retry.calls == ["delete", "schedule"]


def test_local_workers_get_bounded_sleeping_threads(monkeypatch):
    import os

    from soraflow.training.launch import cpu_thread_env

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpu_thread_env(1, environ={}) == {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert cpu_thread_env(2, environ={})["OMP_NUM_THREADS"] == "2"  # the cores divided among the workers
    assert cpu_thread_env(8, environ={})["OMP_NUM_THREADS"] == "1"
    # what the user set wins
    assert cpu_thread_env(1, environ={"OMP_NUM_THREADS": "3"}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert cpu_thread_env(1, environ={"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}) == {}


def test_run_local_passes_the_thread_settings_to_torchrun(monkeypatch, tmp_path):
    import soraflow.training.launch as launch

    seen = {}

    class Runner:
        def run(self, app, scheduler, cfg):
            seen["env"] = app.roles[0].env
            return "handle"

        def wait(self, handle, wait_interval):
            return None

    monkeypatch.setattr("torchx.runner.get_runner", lambda: Runner())
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    launch.run_local(LaunchSpec(recipe="tiny-cpu-stage1", run_dir=str(tmp_path), env={"OMP_WAIT_POLICY": "ACTIVE"}))
    assert seen["env"]["OMP_NUM_THREADS"] == "2"
    assert seen["env"]["OMP_WAIT_POLICY"] == "ACTIVE"  # the spec's own env wins
