"""Job-level goodput accounting that survives restarts.

Definitions (docs/architecture.md#goodput, the ml-goodput-measurement taxonomy re-implemented on a local log):

* **wall time**: first ``job_start`` event of the run → now (or the clean end of the last attempt).
* **productive time**: the sum of step compute times (forward, backward, optimizer) of steps whose
  progress was kept. Steps redone after a rollback or restart are moved to ``wasted_progress``.
* **goodput** = productive / wall, a ratio in [0, 1].
* **badput** by kind: ``init`` (process start → ready to train, per attempt), ``data_loading`` (waiting for
  batches), ``checkpoint_save`` (only the part of a save that blocks the training loop), ``checkpoint_restore``,
  ``wasted_progress`` (step time after the checkpoint that was resumed from, redone), and ``other`` =
  wall − productive − the named kinds (downtime between a crash and the next attempt, logging, eval ...).
  The kinds add up to wall − productive exactly.
* **restarts** by reason (``worker_failure``, ``loss_spike``, ``hang``, ``preemption`` ...): every failure event.
* **recovery time**: failure time → end of the next productive step.
* **time to first step**: job start (or attempt start) → end of the first step.

Persistence: rank 0 appends one JSON object per line to ``<run_dir>/goodput_events.jsonl`` with a single
``write`` on an ``O_APPEND`` descriptor, then ``fsync``. A crash can at worst leave a torn last line, which the
reader skips. On start the log is replayed, so totals continue across restarts.

Failure time after ``kill -9``: nothing is written at the moment of death. When a new attempt opens the log
and finds the previous attempt still open (no ``attempt_end`` and no fatal ``failure`` event), it records an
*inferred* failure at the time of the previous attempt's **last event** (a step, heartbeat, checkpoint ...).
That is a lower bound on the real failure time; the error is at most one step time or one heartbeat
interval (``heartbeat_interval_s``), so recovery time is over-estimated by at most that much and the gap
between the bound and the real death lands in ``other`` badput instead of productive time.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from soraflow.common.atomic import write_text_atomic
from soraflow.monitoring.metrics import BADPUT_KINDS, RESTART_REASONS  # the metric labels are the accounting's kinds
EVENTS_FILE = "goodput_events.jsonl"
METRICS_FILE = "metrics.json"

# Stated nominal peak when no accelerator peak is given (so MFU is defined on CPU test runs): 1e11 FLOP/s,
# roughly a few AVX2 cores in fp32. Reported with peak_flops_source="nominal-cpu"; not a measurement.
NOMINAL_CPU_PEAK_FLOPS = 1.0e11
# Dense bf16 spec peaks per device (no sparsity).
DEVICE_PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


def peak_flops_for_device(name: str | None = None) -> tuple[float, str]:
    """(peak FLOP/s per device, source) for a CUDA device name, else the nominal CPU peak."""
    if name is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            name = torch.cuda.get_device_name()
    for key, val in DEVICE_PEAK_FLOPS.items():
        if name and key in name:
            return val, f"spec-bf16-{key}"
    return NOMINAL_CPU_PEAK_FLOPS, "nominal-cpu"


def read_events(path: str) -> list[dict]:
    """Events of a log; a torn or unparsable line (crash mid-write) is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(ev, dict) and "ev" in ev and "t" in ev:
                    out.append(ev)
    except FileNotFoundError:
        pass
    return out


class GoodputAccumulator:
    """Folds events into totals. Pure: the same events give the same numbers (tests feed synthetic ones)."""

    def __init__(self) -> None:
        self.job_start_t: float | None = None
        self.last_t: float | None = None
        self.end_t: float | None = None  # set by attempt_end, cleared by attempt_start
        self.attempt_open = False
        self.attempts = 0
        self.attempt_start_t: float | None = None
        self.attempt_first_step_t: float | None = None
        self.first_step_t: float | None = None
        self.step_seconds_total = 0.0
        self.wasted_s = 0.0
        self.badput: dict[str, float] = {k: 0.0 for k in BADPUT_KINDS if k not in ("other", "wasted_progress")}
        self.restarts: collections.Counter = collections.Counter()
        self.pending_failures: list[float] = []
        self.recoveries: list[float] = []
        self.last_failure_t: float | None = None
        # (step, seconds, tokens, flops) of steps after the second-newest checkpoint: what a resume may discard
        self.kept_steps: list[tuple[int, float, int, float | None]] = []
        self.ckpt_steps: collections.deque = collections.deque(maxlen=2)
        self.last_ckpt_step: int | None = None
        self.last_ckpt_t: float | None = None
        self.steps = 0
        self.last_step: int | None = None
        self.last_step_s: float | None = None
        self.last_tokens = 0
        self.tokens_total = 0  # tokens of kept (not wasted) steps
        self.last_loss: float | None = None
        self.last_grad_norm: float | None = None
        self.last_flops: float | None = None
        self.flops_total = 0.0  # FLOPs of kept steps that reported them
        self.flops_seconds = 0.0  # compute seconds of those steps
        self.peak_mem: int | None = None

    def apply(self, ev: dict) -> None:
        kind, t = ev["ev"], float(ev["t"])
        self.last_t = t if self.last_t is None else max(self.last_t, t)
        if kind == "job_start":
            if self.job_start_t is None:
                self.job_start_t = t
        elif kind == "attempt_start":
            if self.job_start_t is None:
                self.job_start_t = t
            self.attempts += 1
            self.attempt_open = True
            self.attempt_start_t = t
            self.attempt_first_step_t = None
            self.end_t = None
        elif kind == "attempt_end":
            self.attempt_open = False
            self.end_t = t
        elif kind == "failure":
            self.restarts[ev.get("reason", "worker_failure")] += 1
            self.pending_failures.append(t)
            self.last_failure_t = t
            if ev.get("fatal"):
                self.attempt_open = False
        elif kind == "step":
            sec = float(ev.get("seconds", 0.0))
            tok = int(ev.get("tokens", 0) or 0)
            step = int(ev["step"])
            flops = float(ev["flops"]) if ev.get("flops") is not None else None
            self.steps += 1
            self.step_seconds_total += sec
            self.tokens_total += tok
            self.kept_steps.append((step, sec, tok, flops))
            self.last_step, self.last_step_s, self.last_tokens, self.last_flops = step, sec, tok, flops
            if flops is not None:
                self.flops_total += flops
                self.flops_seconds += sec
            if ev.get("loss") is not None:
                self.last_loss = float(ev["loss"])
            if ev.get("grad_norm") is not None:
                self.last_grad_norm = float(ev["grad_norm"])
            if ev.get("data_s"):
                self.badput["data_loading"] += float(ev["data_s"])
            if ev.get("peak_mem") is not None:
                self.peak_mem = max(self.peak_mem or 0, int(ev["peak_mem"]))
            if self.first_step_t is None:
                self.first_step_t = t
            if self.attempt_first_step_t is None:
                self.attempt_first_step_t = t
            for ft in self.pending_failures:
                self.recoveries.append(max(0.0, t - ft))
            self.pending_failures = []
        elif kind == "badput":
            k = ev["kind"]
            if k == "wasted_progress":
                self.wasted_s += float(ev["seconds"])
            else:
                self.badput[k] = self.badput.get(k, 0.0) + float(ev["seconds"])
        elif kind == "ckpt_save":
            self.badput["checkpoint_save"] += float(ev.get("blocking_s", 0.0))
        elif kind == "ckpt_commit":
            step = int(ev["step"])
            self.last_ckpt_step, self.last_ckpt_t = step, t
            self.ckpt_steps.append(step)
            if len(self.ckpt_steps) == 2:  # keep steps after the older of the two newest checkpoints
                floor = self.ckpt_steps[0]
                self.kept_steps = [x for x in self.kept_steps if x[0] > floor]
        elif kind == "resume":
            step = int(ev["step"])
            self.badput["checkpoint_restore"] += float(ev.get("restore_s", 0.0))
            lost = [x for x in self.kept_steps if x[0] > step]
            lost_s = sum(x[1] for x in lost)
            self.wasted_s += lost_s
            self.step_seconds_total -= lost_s
            self.tokens_total -= sum(x[2] for x in lost)
            self.flops_total -= sum(x[3] for x in lost if x[3] is not None)
            self.flops_seconds -= sum(x[1] for x in lost if x[3] is not None)
            self.kept_steps = [x for x in self.kept_steps if x[0] <= step]
            self.last_step = step
        # heartbeat and unknown kinds only move last_t

    def summary(self, now: float) -> dict[str, Any]:
        start = self.job_start_t if self.job_start_t is not None else now
        end = self.end_t if (self.end_t is not None and not self.attempt_open) else now
        wall = max(0.0, end - start)
        productive = max(0.0, self.step_seconds_total)
        badput = dict(self.badput)
        badput["wasted_progress"] = self.wasted_s
        named = sum(badput.values())
        # Explicit "other" spans (e.g. writing samples) are in `named` already: add the unaccounted rest to them.
        badput["other"] = badput.get("other", 0.0) + max(0.0, wall - productive - named)
        badput = {k: badput.get(k, 0.0) for k in BADPUT_KINDS} | {
            k: v for k, v in badput.items() if k not in BADPUT_KINDS
        }
        return {
            "job_start_time": self.job_start_t,
            "wall_seconds": wall,
            "productive_seconds": productive,
            "goodput_ratio": (productive / wall) if wall > 0 else 0.0,
            "badput_seconds": badput,
            "wasted_progress_seconds": self.wasted_s,
            "restarts_by_reason": dict(self.restarts),
            "restarts_total": int(sum(self.restarts.values())),
            "attempts": self.attempts,
            "recovery_seconds_last": self.recoveries[-1] if self.recoveries else None,
            "recovery_seconds_total": float(sum(self.recoveries)),
            "recovery_count": len(self.recoveries),
            "recovering": bool(self.pending_failures),
            "last_failure_time": self.last_failure_t,
            "time_to_first_step_seconds": (self.first_step_t - start) if self.first_step_t is not None else None,
            "attempt_time_to_first_step_seconds": (
                self.attempt_first_step_t - self.attempt_start_t
                if self.attempt_first_step_t is not None and self.attempt_start_t is not None
                else None
            ),
            "steps_recorded": self.steps,
            "last_step": self.last_step,
            "step_seconds": self.last_step_s,
            "tokens_total": self.tokens_total,
            "tokens_per_second": (self.last_tokens / self.last_step_s) if self.last_step_s else 0.0,
            "tokens_per_second_mean": (self.tokens_total / productive) if productive > 0 else 0.0,
            "loss": self.last_loss,
            "grad_norm": self.last_grad_norm,
            "step_flops": self.last_flops,
            "flops_per_second": (self.last_flops / self.last_step_s) if self.last_flops and self.last_step_s else None,
            "flops_per_second_mean": (self.flops_total / self.flops_seconds) if self.flops_seconds > 0 else None,
            "peak_memory_bytes": self.peak_mem,
            "last_checkpoint_step": self.last_ckpt_step,
            "last_checkpoint_time": self.last_ckpt_t,
            "last_event_time": self.last_t,
        }


def summarize_events(events: Iterable[dict], now: float | None = None) -> dict[str, Any]:
    acc = GoodputAccumulator()
    for ev in events:
        acc.apply(ev)
    return acc.summary(now if now is not None else (acc.last_t or time.time()))


class _Span:
    """What ``GoodputTracker.badput()`` yields: ``note()`` attaches details to the badput event."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def note(self, obj: Any = None, **fields: Any) -> None:
        if obj is not None and hasattr(obj, "blocking_s") and hasattr(obj, "step"):  # checkpoint.SaveResult
            self.fields.update(step=int(obj.step), blocking_s=float(obj.blocking_s),
                               wait_prev_s=float(getattr(obj, "wait_prev_s", 0.0)))
        elif isinstance(obj, dict):
            self.fields.update(obj)
        self.fields.update(fields)


def _current_peak_memory() -> int | None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
    except Exception:
        return None


class GoodputTracker:
    """Records the run's timeline to an append-only log and reports goodput, badput, recovery, MFU.

    Construct once per process (every attempt). Only rank 0 writes; other ranks keep in-memory totals.

    Args:
        run_dir: folder shared by all attempts of the run (the log and metrics.json live there).
        run_id, stage, recipe: the metric labels.
        restart_reason: reason recorded when this attempt finds the previous one died without a word
            (``kill -9``, OOM kill, node loss). Default ``worker_failure``.
        flops_per_token: training FLOPs per token (forward + backward) for MFU; None disables MFU.
        peak_flops: peak FLOP/s of one device; None picks the device's spec or the nominal CPU peak.
        num_devices: devices the step ran on (MFU = achieved / (peak × devices)).
        heartbeat_interval_s: minimum spacing of heartbeat events (bounds the failure-time error).
        clock: wall-clock function (tests inject a fake one).
    """

    def __init__(
        self,
        run_dir: str,
        run_id: str,
        stage: str,
        recipe: str,
        *,
        rank: int | None = None,
        restart_reason: str = "worker_failure",
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        num_devices: int = 1,
        heartbeat_interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        self.run_dir = str(run_dir)
        self.run_id, self.stage, self.recipe = run_id, stage, recipe
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
        self.enabled = self.rank == 0
        self.clock = clock
        self.flops_per_token = flops_per_token
        if peak_flops is None:
            self.peak_flops, self.peak_flops_source = peak_flops_for_device()
        else:
            self.peak_flops, self.peak_flops_source = float(peak_flops), "given"
        self.num_devices = max(1, int(num_devices))
        self.heartbeat_interval_s = heartbeat_interval_s
        self.path = os.path.join(self.run_dir, EVENTS_FILE)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._last_write_t = -math.inf
        self._closed = False
        self.acc = GoodputAccumulator()
        if self.enabled:
            os.makedirs(self.run_dir, exist_ok=True)
            for ev in read_events(self.path):
                self.acc.apply(ev)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        now = self.clock()
        if self.acc.job_start_t is None:
            self._emit({"ev": "job_start", "t": now, "run_id": run_id, "stage": stage, "recipe": recipe})
        elif self.acc.attempt_open:
            # the previous attempt died without closing: failure time bound = its last event
            self._emit({"ev": "failure", "t": self.acc.last_t, "reason": restart_reason, "inferred": True})
        self._emit({"ev": "attempt_start", "t": now, "attempt": self.acc.attempts + 1, "pid": os.getpid()})

    # ------------------------------------------------------------------ writing
    def _emit(self, ev: dict) -> None:
        with self._lock:
            self.acc.apply(ev)
            if self._fd is not None:
                line = (json.dumps(ev, separators=(",", ":"), default=float) + "\n").encode()
                os.write(self._fd, line)  # one write on O_APPEND: the line lands whole or torn-last
                os.fsync(self._fd)
            self._last_write_t = float(ev["t"])

    def _now(self, t: float | None) -> float:
        return self.clock() if t is None else float(t)

    # ------------------------------------------------------------------ recording API
    def record_step(
        self,
        step: int,
        seconds: float,
        *,
        tokens: int = 0,
        loss: float | None = None,
        data_seconds: float = 0.0,
        peak_mem_bytes: int | None = None,
        flops: float | None = None,
        grad_norm: float | None = None,
        peak_flops: float | None = None,
        peak_memory: int | None = None,
        timing: dict | None = None,
        t: float | None = None,
    ) -> None:
        """One finished optimizer step.

        ``seconds`` = compute time only; ``data_seconds`` = waiting for the batch (data_loading badput; leave 0
        if the trainer records that through ``badput("data_loading")``). ``t`` = the step's end time (default
        now). ``flops`` = FLOPs this rank executed in the step (forward + backward): MFU is then per device,
        flops / seconds / peak_flops; without it MFU uses ``flops_per_token × tokens``. ``peak_flops`` updates
        the per-device peak. Peak memory (``peak_mem_bytes`` or ``peak_memory``) is measured (CUDA max
        allocated, else process max RSS) when not given."""
        if peak_flops is not None:
            self.peak_flops, self.peak_flops_source = float(peak_flops), "given"
        if peak_mem_bytes is None:
            peak_mem_bytes = peak_memory if peak_memory is not None else _current_peak_memory()
        ev: dict[str, Any] = {"ev": "step", "t": self._now(t), "step": int(step), "seconds": float(seconds)}
        if tokens:
            ev["tokens"] = int(tokens)
        if loss is not None and math.isfinite(float(loss)):
            ev["loss"] = float(loss)
        if data_seconds:
            ev["data_s"] = float(data_seconds)
        if flops is not None:
            ev["flops"] = float(flops)
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            ev["grad_norm"] = float(grad_norm)
        if peak_mem_bytes is not None:
            ev["peak_mem"] = int(peak_mem_bytes)
        if timing:  # parts of the step and of the wait before it (step_time_breakdown reads them)
            ev["timing"] = {k: round(float(v), 6) for k, v in timing.items()}
        self._emit(ev)

    def record_badput(self, kind: str, seconds: float, *, t: float | None = None) -> None:
        """Time lost to ``kind`` (one of BADPUT_KINDS, or a new kind that then shows up by name)."""
        self._emit({"ev": "badput", "t": self._now(t), "kind": kind, "seconds": float(seconds)})

    @contextlib.contextmanager
    def badput(self, kind: str) -> Iterator[_Span]:
        """``with tracker.badput("init") as span: ...`` records the block's duration as badput of ``kind``.

        ``span.note(x)`` attaches details to the event (a ``checkpoint.SaveResult`` adds its step and
        blocking/wait times; a dict is merged). Wrap only the blocking ``ckpt.save(...)`` call in
        ``badput("checkpoint_save")``: the background write is not badput."""
        span = _Span()
        t0 = self.clock()
        try:
            yield span
        finally:
            t1 = self.clock()
            ev = {"ev": "badput", "t": t1, "kind": kind, "seconds": float(t1 - t0)}
            ev.update({k: v for k, v in span.fields.items() if k not in ev})
            self._emit(ev)

    def record_checkpoint_save(self, step: int, blocking_s: float, *, t: float | None = None) -> None:
        """A save started; only its blocking part is checkpoint_save badput."""
        self._emit({"ev": "ckpt_save", "t": self._now(t), "step": int(step), "blocking_s": float(blocking_s)})

    def record_checkpoint_committed(self, result: Any = None, *, step: int | None = None,
                                    total_s: float | None = None, t: float | None = None) -> None:
        """A checkpoint became resumable. Accepts a checkpoint.SaveResult (usable as ``on_commit``)."""
        if result is not None:
            step, total_s = result.step, result.total_s
        self._emit({"ev": "ckpt_commit", "t": self._now(t), "step": int(step), "total_s": total_s})

    def record_failure(self, reason: str, *, t: float | None = None, fatal: bool = False) -> None:
        """A failure that forces a rollback/restart (counted in restarts_total{reason}).

        ``fatal=True`` when the process is about to exit (hang watchdog, preemption): the next attempt then
        does not infer a second failure. ``t`` = when it happened (default now)."""
        self._emit({"ev": "failure", "t": self._now(t), "reason": reason, "fatal": bool(fatal)})

    def record_resume(self, step: int, restore_seconds: float = 0.0, *, t: float | None = None) -> None:
        """Training state restored to checkpoint ``step``: restore time is badput, and the step time
        recorded after ``step`` (the work that will be redone) moves from productive to wasted_progress."""
        self._emit({"ev": "resume", "t": self._now(t), "step": int(step), "restore_s": float(restore_seconds)})

    def heartbeat(self, *, t: float | None = None, force: bool = False) -> None:
        """Marks the process alive (at most once per ``heartbeat_interval_s`` unless forced)."""
        now = self._now(t)
        if force or now - self._last_write_t >= self.heartbeat_interval_s:
            self._emit({"ev": "heartbeat", "t": now})

    def close(self, *, t: float | None = None) -> None:
        """Clean end of this attempt (no failure will be inferred); writes metrics.json."""
        if self._closed:
            return
        self._closed = True
        self._emit({"ev": "attempt_end", "t": self._now(t)})
        self.write_metrics_json()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------------ the trainer's recovery events
    def rollback(self, reason: str, *, from_step: int | None = None, to_step: int,
                 restore_seconds: float = 0.0, t: float | None = None) -> None:
        """In-process rollback: a failure (``spike`` -> ``loss_spike``, ``non_finite`` ->
        ``loss_non_finite``) and a resume at ``to_step``; ``from_step`` is informational."""
        reason = {"spike": "loss_spike", "non_finite": "loss_non_finite"}.get(str(reason), str(reason))
        now = self._now(t)
        self.record_failure(reason, t=now)
        self.record_resume(to_step, restore_seconds, t=now)

    def hang(self, stalled_seconds: float) -> None:
        """For ``HangWatchdog(on_hang=tracker.hang)``: a fatal ``hang`` failure dated to the last heartbeat."""
        self.record_failure("hang", t=self.clock() - float(stalled_seconds), fatal=True)

    # ------------------------------------------------------------------ reporting
    def summary(self, *, now: float | None = None) -> dict[str, Any]:
        with self._lock:
            s = self.acc.summary(self._now(now))
        s.update(run_id=self.run_id, stage=self.stage, recipe=self.recipe)
        s["peak_flops"] = self.peak_flops
        s["peak_flops_source"] = self.peak_flops_source
        s["num_devices"] = self.num_devices
        s["flops_per_token"] = self.flops_per_token
        denom = self.peak_flops * self.num_devices
        s["mfu"] = s["mfu_mean"] = None
        if s["flops_per_second"] is not None:  # per-step FLOPs reported (exact for variable shapes)
            s["mfu"] = s["flops_per_second"] / denom
            s["mfu_mean"] = (s["flops_per_second_mean"] or 0.0) / denom
        elif self.flops_per_token:
            s["mfu"] = s["tokens_per_second"] * self.flops_per_token / denom
            s["mfu_mean"] = s["tokens_per_second_mean"] * self.flops_per_token / denom
        return s

    def write_metrics_json(self, path: str | None = None) -> dict[str, Any]:
        """Writes summary() to ``<run_dir>/metrics.json`` atomically (temp file + fsync + rename)."""
        s = self.summary()
        if not self.enabled:
            return s
        path = path or os.path.join(self.run_dir, METRICS_FILE)
        write_text_atomic(path, json.dumps(s, indent=1, sort_keys=True), fsync=True)
        return s


LOADER_PARTS = ("decode_s", "resize_s")  # worker-side, summed over the batch's items
STEP_PARTS = ("ae_encode_s", "text_encode_s")  # inside the step, on the training process


def step_time_breakdown(events: Iterable[dict], skip_first: int = 5) -> dict[str, Any]:
    """Where a stage's loop time went, from its step events (the `timing` the trainer records).

    The loop time of a step is the wait for its batch (`data_wait_s`) plus its compute seconds. Shares are of
    the summed loop time: `data_wait` (the loader did not keep up), `ae_encode` and `text_encode` (frozen
    encoders run inside the step). Decode and resize run in the loader's workers while earlier steps compute:
    they are reported as worker seconds per step and as a multiple of the loop time (with W workers the loader
    keeps up while that multiple stays below W). The first `skip_first` steps (worker start-up, autotuning) are
    left out (at most a fifth of the steps, so a short run still reports); MFU and tokens/s are over the same
    steps."""
    steps = [e for e in events if e.get("ev") == "step"]
    by_step = {int(e["step"]): e for e in steps}  # the last attempt's record of a repeated step
    kept = [by_step[s] for s in sorted(by_step)]
    kept = kept[min(skip_first, len(kept) // 5):]
    if not kept:
        return {"steps": 0}
    compute = sum(float(e["seconds"]) for e in kept)
    parts = {k: sum(float((e.get("timing") or {}).get(k, 0.0)) for e in kept)
             for k in ("data_wait_s",) + LOADER_PARTS + STEP_PARTS}
    loop = compute + parts["data_wait_s"]
    n = len(kept)
    flops = [float(e["flops"]) for e in kept if e.get("flops")]
    tokens = sum(int(e.get("tokens", 0)) for e in kept)
    out = {
        "steps": n, "first_step_counted": int(kept[0]["step"]),
        "loop_seconds": loop, "compute_seconds": compute,
        "step_seconds_mean": compute / n, "loop_seconds_mean": loop / n,
        "data_wait_share": parts["data_wait_s"] / loop if loop > 0 else 0.0,
        "ae_encode_share": parts["ae_encode_s"] / loop if loop > 0 else 0.0,
        "text_encode_share": parts["text_encode_s"] / loop if loop > 0 else 0.0,
        "decode_worker_seconds_per_step": parts["decode_s"] / n,
        "resize_worker_seconds_per_step": parts["resize_s"] / n,
        "decode_worker_load": parts["decode_s"] / loop if loop > 0 else 0.0,
        "resize_worker_load": parts["resize_s"] / loop if loop > 0 else 0.0,
        "tokens_per_second": tokens / compute if compute > 0 else 0.0,
        "flops_per_step_mean": (sum(flops) / len(flops)) if flops else None,
        "flops_per_second": (sum(flops) / compute) if flops and len(flops) == n and compute > 0 else None,
    }
    return out


def mfu(flops_per_second: float | None, peak_flops: float, num_devices: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' dense peak."""
    if flops_per_second is None or peak_flops <= 0:
        return None
    return flops_per_second / (peak_flops * num_devices)
