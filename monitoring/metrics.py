"""The one home of soraflow's Prometheus metric definitions (`docs/monitoring.md`).

Conventions: prefix ``soraflow_``, base units (seconds, bytes), ratios 0–1, counters end in ``_total``
(and only counters: a value set once, like a batch step's count of clips, is a gauge without ``_total``).
Labels: ``run_id``, ``stage``, ``recipe``, plus ``kind`` / ``reason`` / ``result`` / ``phase`` where a
family is split. Never step, rank or file path: those are values or log fields, not series.

Each producer builds its own :class:`~prometheus_client.CollectorRegistry` (so tests and several producers
in one process never collide; no process-global default registry is touched).

* Training (long-running, scraped): :class:`TrainingMetrics`. Goodput-derived series come from
  ``GoodputTracker.summary()`` through :func:`update_training_metrics`; they are computed from the
  run's persistent event log, so after a restart the exporter comes back with the run's totals
  (``restarts_total`` does not reset). ``productive_seconds`` is a gauge, not a counter, because a rollback
  moves redone step time from productive to ``wasted_progress``. Export from rank 0 with
  :func:`start_exporter`.
* Batch steps (ingest / filter / eval; short-lived, pushed): :class:`BatchMetrics` and
  :func:`push_batch_metrics` to a Pushgateway. All gauges: the step pushes its final numbers once, and a
  counter (``_total``, with ``rate()``/``increase()`` semantics and a ``_created`` series) would claim a
  monotonic history that a one-shot push does not have. One Pushgateway group per job + stage: the next run's
  push replaces the previous run's series (they still carry ``run_id`` as a label, and Prometheus keeps the
  history), so the gateway holds one result per step instead of every run's forever.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Label values shared with the goodput accounting (training/goodput.py) and the dashboards (`docs/monitoring.md`).
BADPUT_KINDS = ("init", "data_loading", "checkpoint_save", "checkpoint_restore", "wasted_progress", "other")
RESTART_REASONS = ("worker_failure", "loss_spike", "hang", "preemption")

PREFIX = "soraflow_"
LABELS = ("run_id", "stage", "recipe")
FORBIDDEN_LABELS = ("step", "rank", "path", "file", "filename", "local_rank")

DEFAULT_TRAINER_PORT = 9464  # rank-0 exporter port convention (named `metrics` on pods)
DEFAULT_PUSHGATEWAY_PORT = 9091
DEFAULT_PROMETHEUS_PORT = 9090

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
CKPT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

# name -> (summary key, help). Gauges read straight from GoodputTracker.summary().
_SUMMARY_GAUGES = {
    "soraflow_train_goodput_ratio": ("goodput_ratio", "Productive step time / job wall time (0-1)."),
    "soraflow_train_productive_seconds": ("productive_seconds", "Step compute time whose progress was kept."),
    "soraflow_train_wall_seconds": ("wall_seconds", "Job wall time since the run's first start."),
    "soraflow_train_wasted_progress_seconds": (
        "wasted_progress_seconds", "Step time lost to rollbacks/restarts (redone after the resumed checkpoint)."),
    "soraflow_train_last_recovery_seconds": (
        "recovery_seconds_last", "Last recovery: failure time to the end of the next productive step."),
    "soraflow_train_time_to_first_step_seconds": (
        "time_to_first_step_seconds", "Job start to the end of the first training step."),
    "soraflow_train_attempt_time_to_first_step_seconds": (
        "attempt_time_to_first_step_seconds", "This attempt's start to its first finished step."),
    "soraflow_train_step_seconds": ("step_seconds", "Compute time of the last step."),
    "soraflow_train_step": ("last_step", "Last completed (or resumed) global step."),
    "soraflow_train_tokens_per_second": ("tokens_per_second", "Tokens per second of the last step."),
    "soraflow_train_mfu_ratio": ("mfu", "Model FLOPs utilisation of the last step (0-1)."),
    "soraflow_train_loss": ("loss", "Loss of the last step."),
    "soraflow_train_peak_memory_bytes": ("peak_memory_bytes", "Peak device (or host RSS) memory."),
    "soraflow_checkpoint_last_success_timestamp_seconds": (
        "last_checkpoint_time", "Unix time the last checkpoint was committed."),
    "soraflow_job_start_timestamp_seconds": ("job_start_time", "Unix time of the run's first start."),
}


class _SummaryCollector:
    """Yields the goodput families from the latest summary (absolute values, restart-proof)."""

    def __init__(self, owner: TrainingMetrics):
        self.owner = owner

    def describe(self):
        return []  # no up-front names: the families appear once a summary is set

    def collect(self):
        s = self.owner.summary
        if s is None:
            return
        lv = list(self.owner.label_values)
        for name, (key, doc) in _SUMMARY_GAUGES.items():
            val = s.get(key)
            if val is None:
                continue
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lv, float(val))
            yield g
        bad = GaugeMetricFamily(
            "soraflow_train_badput_seconds", "Job wall time not spent on productive steps, by kind.",
            labels=LABELS + ("kind",))
        for kind, sec in (s.get("badput_seconds") or {}).items():
            bad.add_metric(lv + [kind], float(sec))
        yield bad
        rst = CounterMetricFamily(
            "soraflow_train_restarts", "Failures that forced a restart or rollback, by reason.",
            labels=LABELS + ("reason",))
        # every known reason from the start, at 0: a series that first appears at 1 hides that increase from
        # increase()/rate(), so the RestartLoop alert would miss a run's first restart
        by_reason = {reason: 0 for reason in RESTART_REASONS}
        by_reason.update(s.get("restarts_by_reason") or {})
        for reason, n in by_reason.items():
            rst.add_metric(lv + [reason], float(n))
        yield rst
        steps = CounterMetricFamily("soraflow_train_steps", "Training steps run (redone steps included).", labels=LABELS)
        steps.add_metric(lv, float(s.get("steps_recorded") or 0))
        yield steps
        rec = CounterMetricFamily("soraflow_train_recoveries", "Recoveries completed.", labels=LABELS)
        rec.add_metric(lv, float(s.get("recovery_count") or 0))
        yield rec


class TrainingMetrics:
    """Training metrics of one run; its own registry unless one is given."""

    def __init__(self, run_id: str, stage: str, recipe: str, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.label_values = (str(run_id), str(stage), str(recipe))
        self.summary: dict | None = None
        self.server = None  # set by serve()
        self._last_observed_steps = 0
        self.registry.register(_SummaryCollector(self))
        r = self.registry
        self.step_duration = Histogram(
            "soraflow_train_step_duration_seconds", "Training step compute time.", LABELS,
            registry=r, buckets=STEP_BUCKETS).labels(*self.label_values)
        self.ckpt_save_duration = Histogram(
            "soraflow_checkpoint_save_duration_seconds",
            "Checkpoint save time; phase=blocking is what the training loop waited, total is until committed.",
            LABELS + ("phase",), registry=r, buckets=CKPT_BUCKETS)
        self.ckpt_saves = Counter(
            "soraflow_checkpoint_saves", "Checkpoint saves by result (ok|error).", LABELS + ("result",), registry=r)
        self.build_info = Info("soraflow_build", "Build of the running code.", registry=r)

    def update_from_summary(self, summary: Mapping[str, Any]) -> None:
        """Set every goodput/throughput series from ``GoodputTracker.summary()``; observes new step time."""
        self.summary = dict(summary)
        n = int(summary.get("steps_recorded") or 0)
        if n > self._last_observed_steps and summary.get("step_seconds") is not None:
            self.step_duration.observe(float(summary["step_seconds"]))
        self._last_observed_steps = n

    def observe_step(self, seconds: float) -> None:
        self.step_duration.observe(float(seconds))

    def observe_checkpoint_save(self, blocking_s: float | None = None, total_s: float | None = None,
                                ok: bool = True, *, result: Any = None) -> None:
        """Record a save; pass a ``soraflow.training.checkpoint.SaveResult`` as ``result`` or the numbers."""
        if result is not None:
            blocking_s, total_s, ok = result.blocking_s, result.total_s, result.error is None
        lv = self.label_values
        if blocking_s is not None:
            self.ckpt_save_duration.labels(*lv, "blocking").observe(float(blocking_s))
        if total_s is not None:
            self.ckpt_save_duration.labels(*lv, "total").observe(float(total_s))
        self.ckpt_saves.labels(*lv, "ok" if ok else "error").inc()

    def serve(self, port: int, *, addr: str | None = None, rank: int | None = None):
        """Start the rank-0 exporter (see :func:`start_exporter`); ``addr`` defaults to env
        SORAFLOW_METRICS_ADDR, else loopback. Returns the server (None off rank 0)."""
        addr = addr or os.environ.get("SORAFLOW_METRICS_ADDR") or "127.0.0.1"
        started = start_exporter(port, self.registry, addr=addr, rank=rank)
        self.server = started[0] if started else None
        return self.server

    def finish(self, summary: Mapping[str, Any], linger_s: float | None = None) -> None:
        """Publish the run's final summary, then keep serving ``linger_s`` seconds (env
        SORAFLOW_METRICS_LINGER_S, default 0) so a scraper sees the final numbers before the process exits."""
        self.update_from_summary(summary)
        if linger_s is None:
            linger_s = float(os.environ.get("SORAFLOW_METRICS_LINGER_S", "0") or 0)
        if getattr(self, "server", None) is not None and linger_s > 0:
            time.sleep(linger_s)

    def set_build_info(self, version: str | None = None, git_commit: str | None = None,
                       image_digest: str | None = None) -> None:
        info = build_info()
        info.update({k: v for k, v in
                     {"version": version, "git_commit": git_commit, "image_digest": image_digest}.items() if v})
        self.build_info.info(info)


def update_training_metrics(metrics: TrainingMetrics, summary: Mapping[str, Any]) -> None:
    """Functional form of :meth:`TrainingMetrics.update_from_summary`."""
    metrics.update_from_summary(summary)


def build_info() -> dict[str, str]:
    """version (package metadata), git_commit and image_digest (env SORAFLOW_GIT_COMMIT / SORAFLOW_IMAGE_DIGEST)."""
    from soraflow.common.provenance import package_version, source_commit

    return {
        "version": package_version(),
        "git_commit": source_commit() or "unknown",
        "image_digest": os.environ.get("SORAFLOW_IMAGE_DIGEST", "unknown"),
    }


def start_exporter(port: int, registry: CollectorRegistry, *, addr: str = "0.0.0.0", rank: int | None = None):
    """Serve ``registry`` on ``http://addr:port/metrics`` from rank 0 only (env RANK when ``rank`` is None).

    Returns ``(server, thread)`` on rank 0 (``server.server_port`` is the bound port; 0 picks one),
    ``None`` elsewhere. Stop with ``server.shutdown()``.
    """
    from prometheus_client import start_http_server

    rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
    if rank != 0:
        return None
    return start_http_server(int(port), addr=addr, registry=registry)


# ---------------------------------------------------------------------- batch steps (Pushgateway)
class BatchMetrics:
    """Completion metrics of one batch step (ingest, filter, eval ...): gauges set once, then pushed."""

    def __init__(self, run_id: str, stage: str, recipe: str, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.label_values = (str(run_id), str(stage), str(recipe))
        r = self.registry
        # ingest counts source videos, the filter levels count clips (monitoring/batch.py)
        self.clips_in = Gauge("soraflow_batch_clips_in", "Clips that entered the step in this run.", LABELS,
                              registry=r)
        self.clips_kept = Gauge("soraflow_batch_clips_kept", "Clips the step kept in this run.", LABELS, registry=r)
        self.clips_rejected = Gauge("soraflow_batch_clips_rejected", "Clips the step rejected in this run, by reason.",
                                    LABELS + ("reason",), registry=r)
        self.step_duration = Gauge(
            "soraflow_batch_step_duration_seconds", "Wall time of the batch step.", LABELS, registry=r)
        self.last_success = Gauge(
            "soraflow_batch_last_success_timestamp_seconds", "Unix time the step last finished.", LABELS, registry=r)
        Info("soraflow_build", "Build of the running code.", registry=r).info(build_info())

    def record(self, *, clips_in: int = 0, clips_kept: int = 0,
               rejected_by_reason: Mapping[str, int] | None = None, duration_s: float | None = None,
               finished_at: float | None = None) -> None:
        """Set the run's numbers (absolute values: recording twice keeps the second, it does not add up)."""
        lv = self.label_values
        self.clips_in.labels(*lv).set(int(clips_in))
        self.clips_kept.labels(*lv).set(int(clips_kept))
        for reason, n in (rejected_by_reason or {}).items():
            self.clips_rejected.labels(*lv, str(reason)).set(int(n))
        if duration_s is not None:
            self.step_duration.labels(*lv).set(float(duration_s))
        self.last_success.labels(*lv).set(time.time() if finished_at is None else float(finished_at))


def batch_grouping_key(stage: str) -> dict[str, str]:
    """Pushgateway grouping key of a batch step besides ``job``: the stage only, not the run.

    A PUT replaces a whole group, so the next run of the same step overwrites this run's series instead of
    adding a group per run that nobody deletes (which kept alerts on finished runs firing forever). Runs
    that finish within one scrape interval of each other on the same step lose the earlier one's numbers.
    """
    return {"stage": str(stage)}


def push_batch_metrics(
    gateway_url: str,
    job: str,
    *,
    run_id: str,
    stage: str,
    recipe: str,
    clips_in: int = 0,
    clips_kept: int = 0,
    rejected_by_reason: Mapping[str, int] | None = None,
    duration_s: float | None = None,
    timeout: float = 10.0,
) -> BatchMetrics:
    """Push one batch step's completion metrics to a Pushgateway (PUT: replaces the group).

    The group is ``job`` + ``stage`` (:func:`batch_grouping_key`); ``run_id`` and ``recipe`` are labels of
    the pushed series. Returns the :class:`BatchMetrics` (its registry holds what was pushed).
    """
    m = BatchMetrics(run_id, stage, recipe)
    m.record(clips_in=clips_in, clips_kept=clips_kept, rejected_by_reason=rejected_by_reason, duration_s=duration_s)
    push_to_gateway(gateway_url, job=job, registry=m.registry, grouping_key=batch_grouping_key(stage),
                    timeout=timeout)
    return m
