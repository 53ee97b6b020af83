"""GoodputTracker arithmetic and persistence, LossGuard, HangWatchdog, soraflow.monitoring.metrics."""

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from soraflow.monitoring.metrics import (
    FORBIDDEN_LABELS,
    TrainingMetrics,
    push_batch_metrics,
    start_exporter,
    update_training_metrics,
)
from soraflow.training.goodput import EVENTS_FILE, GoodputTracker, read_events, summarize_events
from soraflow.training.recovery import HANG_EXIT_CODE, HangWatchdog, LossGuard, LossVerdict

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def _tracker(run_dir, clock, **kw):
    kw.setdefault("flops_per_token", 6e6)
    kw.setdefault("peak_flops", 1e10)
    return GoodputTracker(str(run_dir), "run-1", "dit_stage1", "tiny-cpu", rank=0, clock=clock, **kw)


def _steps(tr, clock, steps, start):
    """Each step: 0.5 s waiting for data, then 2 s compute, 1000 tokens."""
    t = start
    for s in steps:
        t += 2.5
        clock.t = t
        tr.record_step(s, 2.0, tokens=1000, loss=1.0 / s, data_seconds=0.5, peak_mem_bytes=1000 + s)
    return t


def test_goodput_arithmetic_with_a_restart(tmp_path):
    clock = FakeClock(0.0)
    tr = _tracker(tmp_path, clock)  # job starts at t=0
    tr.record_badput("init", 10.0, t=10.0)  # 0-10 init
    _steps(tr, clock, [1, 2], 10.0)  # steps end at 12.5, 15
    tr.record_checkpoint_save(2, blocking_s=1.0, t=16.0)  # 15-16 blocked on the save
    _steps(tr, clock, [3, 4], 16.0)  # 18.5, 21
    tr.record_checkpoint_committed(step=2, total_s=3.0, t=17.0)
    del tr  # killed at some point after t=21: no close(), no failure event

    clock.t = 30.0  # the restarted process comes up at t=30
    tr = _tracker(tmp_path, clock)
    tr.record_badput("init", 5.0, t=35.0)  # 30-35 init
    tr.record_resume(2, restore_seconds=2.0, t=37.0)  # 35-37 restore step 2 -> steps 3, 4 are redone
    _steps(tr, clock, [3, 4], 37.0)  # 39.5, 42
    tr.close(t=42.0)

    s = tr.summary(now=100.0)  # a closed job's wall time stops at its end
    assert s["wall_seconds"] == pytest.approx(42.0)
    assert s["productive_seconds"] == pytest.approx(8.0)  # 6 steps x 2 s, minus the 2 redone
    assert s["goodput_ratio"] == pytest.approx(8.0 / 42.0)
    assert s["badput_seconds"] == pytest.approx({
        "init": 15.0, "data_loading": 3.0, "checkpoint_save": 1.0, "checkpoint_restore": 2.0,
        "wasted_progress": 4.0, "other": 9.0,  # other = the downtime 21 -> 30
    })
    assert s["productive_seconds"] + sum(s["badput_seconds"].values()) == pytest.approx(s["wall_seconds"])
    assert s["wasted_progress_seconds"] == pytest.approx(4.0)
    assert s["restarts_by_reason"] == {"worker_failure": 1} and s["restarts_total"] == 1
    assert s["last_failure_time"] == pytest.approx(21.0)  # bound = last event of the dead attempt
    assert s["recovery_seconds_last"] == pytest.approx(39.5 - 21.0)
    assert s["time_to_first_step_seconds"] == pytest.approx(12.5)
    assert s["attempt_time_to_first_step_seconds"] == pytest.approx(9.5)
    assert s["attempts"] == 2 and s["last_step"] == 4 and s["last_checkpoint_step"] == 2
    assert s["tokens_per_second"] == pytest.approx(500.0)
    assert s["tokens_total"] == 4000  # redone steps' tokens are not counted twice
    assert s["mfu"] == pytest.approx(500.0 * 6e6 / 1e10)
    assert s["peak_memory_bytes"] == 1004 and s["loss"] == pytest.approx(0.25)

    # metrics.json written atomically by close(), and the log replays to the same numbers
    mj = json.loads((tmp_path / "metrics.json").read_text())
    assert mj["goodput_ratio"] == pytest.approx(8.0 / 42.0)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    replay = summarize_events(read_events(str(tmp_path / EVENTS_FILE)), now=100.0)
    assert replay["goodput_ratio"] == pytest.approx(s["goodput_ratio"])
    assert replay["badput_seconds"] == pytest.approx(s["badput_seconds"])


def test_rollback_and_fatal_failures_are_counted_once(tmp_path):
    clock = FakeClock(0.0)
    tr = _tracker(tmp_path, clock)
    _steps(tr, clock, [1, 2, 3], 0.0)  # 2.5, 5, 7.5
    tr.record_checkpoint_committed(step=1, total_s=0.1, t=3.0)
    tr.record_failure("loss_spike", t=8.0)  # in-process rollback to step 1
    tr.record_resume(1, restore_seconds=1.0, t=9.0)
    _steps(tr, clock, [2], 9.0)  # 11.5
    tr.record_failure("hang", t=12.0, fatal=True)  # the watchdog reports, then the process exits
    clock.t = 20.0
    tr = _tracker(tmp_path, clock, restart_reason="worker_failure")
    _steps(tr, clock, [3], 20.0)  # 22.5
    s = tr.summary(now=22.5)
    assert s["restarts_by_reason"] == {"loss_spike": 1, "hang": 1}  # no extra inferred failure
    assert s["wasted_progress_seconds"] == pytest.approx(4.0)  # steps 2, 3 redone after the rollback
    assert s["recovery_count"] == 2 and s["recovery_seconds_last"] == pytest.approx(10.5)
    assert s["productive_seconds"] == pytest.approx(10.0 - 4.0)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from soraflow.training.goodput import GoodputTracker
    tr = GoodputTracker(sys.argv[1], "run-k", "dit_stage1", "tiny-cpu", rank=0)
    i = 0
    while True:
        i += 1
        tr.record_step(i, 0.01, tokens=10)
        if i == 5:
            open(sys.argv[2], "w").close()
        time.sleep(0.01)
    """
)


def test_event_log_survives_sigkill(tmp_path):
    script, flag = tmp_path / "run.py", tmp_path / "five"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO)))
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(script), str(run_dir), str(flag)])
    try:
        deadline = time.time() + 30
        while not flag.exists():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
    before = read_events(str(run_dir / EVENTS_FILE))
    steps = [e for e in before if e["ev"] == "step"]
    assert len(steps) >= 5 and [e["step"] for e in steps] == list(range(1, len(steps) + 1))
    tr = GoodputTracker(str(run_dir), "run-k", "dit_stage1", "tiny-cpu", rank=0)
    s = tr.summary()
    assert s["steps_recorded"] == len(steps) and s["attempts"] == 2
    assert s["restarts_by_reason"] == {"worker_failure": 1}
    assert s["last_failure_time"] == pytest.approx(before[-1]["t"])  # the documented bound
    failure = [e for e in read_events(str(run_dir / EVENTS_FILE)) if e["ev"] == "failure"]
    assert len(failure) == 1 and failure[0]["inferred"] is True


def test_loss_guard_decisions():
    g = LossGuard(spike_factor=2.0, window=3, warmup=3)
    seq = [10.0, 100.0, 9.0, 8.0, 30.0, float("nan"), float("inf"), 17.0, 7.0, 40.0, 19.0]
    got = [g.check(x) for x in seq]
    assert got == [
        LossVerdict.OK,  # warm-up: not judged
        LossVerdict.OK,  # warm-up: a big early loss is fine
        LossVerdict.OK,
        LossVerdict.OK,  # window [100, 9, 8] -> median 9
        LossVerdict.SPIKE,  # 30 > 2 x 9
        LossVerdict.NON_FINITE,
        LossVerdict.NON_FINITE,
        LossVerdict.OK,  # 17 <= 18; window -> [8, 17] + ... = [9, 8, 17]
        LossVerdict.OK,  # window [8, 17, 7]
        LossVerdict.SPIKE,  # median 8 -> limit 16
        LossVerdict.SPIKE,  # 19 > 16 as well; rejected losses do not enter the window
    ]
    assert g.consecutive_bad == 2
    assert LossGuard(2.0, 3, 0).check(float("nan")) == LossVerdict.NON_FINITE
    g2 = LossGuard(2.0, 3, 3)
    g2.load_state_dict(g.state_dict())
    assert g2.check(16.5) == LossVerdict.SPIKE and g2.check(15.0) == LossVerdict.OK


_HANG_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from soraflow.training.recovery import HangWatchdog
    def on_hang(stalled):
        open(sys.argv[1], "w").write(str(stalled))
    wd = HangWatchdog(0.3, on_hang, poll_s=0.05).start()
    for _ in range(5):
        wd.heartbeat(); time.sleep(0.05)
    time.sleep(30)   # the loop stalls
    """
)


def test_watchdog_ends_a_stalled_process_with_its_exit_code(tmp_path):
    script, marker = tmp_path / "hang.py", tmp_path / "hung"
    script.write_text(_HANG_SCRIPT.format(repo=str(REPO)))
    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True, timeout=30)
    assert r.returncode == HANG_EXIT_CODE, r.stderr
    assert time.time() - t0 < 15
    assert float(marker.read_text()) >= 0.3
    assert "no heartbeat" in r.stderr


def test_watchdog_quiet_while_heartbeats_come():
    exits, hangs = [], []
    wd = HangWatchdog(0.3, hangs.append, poll_s=0.02, exit_fn=exits.append).start()
    for _ in range(30):  # 0.6 s of beats, every 0.02 s
        wd.heartbeat()
        time.sleep(0.02)
    wd.stop()
    assert not exits and not hangs and not wd.fired
    wd2 = HangWatchdog(0.1, hangs.append, poll_s=0.02, exit_fn=exits.append)
    time.sleep(0.3)
    assert not exits  # not started: not judged
    wd2.start()
    time.sleep(0.4)
    wd2.stop()
    assert exits == [HANG_EXIT_CODE] and len(hangs) == 1 and hangs[0] > 0.1


def _families(registry):
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def test_training_metrics_names_and_labels(tmp_path):
    clock = FakeClock(0.0)
    tr = _tracker(tmp_path, clock)
    _steps(tr, clock, [1, 2], 0.0)
    tr.record_checkpoint_committed(step=2, total_s=1.0, t=6.0)
    tr.record_failure("loss_spike", t=6.5)
    tm = TrainingMetrics("run-1", "dit_stage1", "tiny-cpu")
    update_training_metrics(tm, tr.summary(now=10.0))
    tm.observe_checkpoint_save(0.2, 1.0)
    tm.set_build_info(version="0.1.0", git_commit="abc", image_digest="sha256:x")
    fams = _families(tm.registry)
    names = {f.name for f in fams}
    samples = {s.name: s for f in fams for s in f.samples}
    for n in ["soraflow_train_goodput_ratio", "soraflow_train_productive_seconds", "soraflow_train_badput_seconds",
              "soraflow_train_wasted_progress_seconds", "soraflow_train_tokens_per_second",
              "soraflow_train_mfu_ratio", "soraflow_train_loss", "soraflow_train_peak_memory_bytes",
              "soraflow_train_step_seconds", "soraflow_checkpoint_last_success_timestamp_seconds",
              "soraflow_train_time_to_first_step_seconds"]:
        assert n in names, n
    for n in ["soraflow_train_restarts_total", "soraflow_train_steps_total", "soraflow_checkpoint_saves_total",
              "soraflow_train_step_duration_seconds_count", "soraflow_checkpoint_save_duration_seconds_bucket",
              "soraflow_build_info"]:
        assert n in samples, n
    assert samples["soraflow_train_goodput_ratio"].value == pytest.approx(4.0 / 10.0)
    restarts = [s for f in fams for s in f.samples if s.name == "soraflow_train_restarts_total"]
    # every known reason is exported from the start (0 until it happens), so increase() sees the first restart
    assert {s.labels["reason"]: s.value for s in restarts} == {"worker_failure": 0.0, "loss_spike": 1.0,
                                                              "hang": 0.0, "preemption": 0.0}
    kinds = {s.labels["kind"] for f in fams for s in f.samples if s.name == "soraflow_train_badput_seconds"}
    assert kinds == {"init", "data_loading", "checkpoint_save", "checkpoint_restore", "wasted_progress", "other"}
    assert samples["soraflow_build_info"].labels == {"version": "0.1.0", "git_commit": "abc",
                                                     "image_digest": "sha256:x"}
    for f in fams:
        assert f.name.startswith("soraflow_"), f.name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples)
        for s in f.samples:
            assert not set(s.labels) & set(FORBIDDEN_LABELS), (s.name, s.labels)
            if s.name != "soraflow_build_info":
                assert {"run_id", "stage", "recipe"} <= set(s.labels), s.name
                assert set(s.labels) <= {"run_id", "stage", "recipe", "kind", "reason", "result", "phase", "le"}


def test_exporter_rank0_only_and_pushgateway(tmp_path):
    tm = TrainingMetrics("r", "dit_stage1", "tiny-cpu")
    tm.observe_step(0.5)
    assert start_exporter(0, tm.registry, addr="127.0.0.1", rank=1) is None
    server, _thread = start_exporter(0, tm.registry, addr="127.0.0.1", rank=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
        assert "soraflow_train_step_duration_seconds_count" in body
    finally:
        server.shutdown()

    got = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            got["path"] = self.path
            got["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    gw = http.server.HTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=gw.serve_forever, daemon=True)
    th.start()
    try:
        push_batch_metrics(f"127.0.0.1:{gw.server_port}", "filter", run_id="r", stage="filter", recipe="tiny-cpu",
                           clips_in=10, clips_kept=7, rejected_by_reason={"blur": 2, "ocr": 1}, duration_s=3.5)
    finally:
        gw.shutdown()
    assert got["path"] == "/metrics/job/filter/stage/filter"  # one group per job + stage: the next run replaces it
    fams = {f.name: f for f in text_string_to_metric_families(got["body"])}
    val = {(s.name, s.labels.get("reason")): s.value for f in fams.values() for s in f.samples}
    assert {s.labels["run_id"] for f in fams.values() for s in f.samples if "run_id" in s.labels} == {"r"}
    assert val[("soraflow_batch_clips_in", None)] == 10
    assert val[("soraflow_batch_clips_kept", None)] == 7
    assert val[("soraflow_batch_clips_rejected", "blur")] == 2
    assert val[("soraflow_batch_step_duration_seconds", None)] == 3.5
    for f in fams.values():
        for s in f.samples:
            assert not set(s.labels) & set(FORBIDDEN_LABELS)


def test_trainer_facing_events(tmp_path):
    from soraflow.training.checkpoint import SaveResult

    clock = FakeClock(0.0)
    tr = GoodputTracker(str(tmp_path), "r", "dit_stage1", "tiny-cpu", rank=0, clock=clock, peak_flops=1e12)
    with tr.badput("checkpoint_save") as span:
        clock.t = 1.5
        span.note(SaveResult(step=0, path="p", started_at=0.0, blocking_s=1.5))
    clock.t = 3.5
    tr.record_step(1, 2.0, tokens=100, flops=1e12, loss=0.5, grad_norm=1.0, peak_flops=2e12, peak_memory=7)
    clock.t = 4.0
    tr.rollback("spike", from_step=1, to_step=0)  # LossVerdict.SPIKE's value
    clock.t = 6.0
    tr.hang(1.0)
    s = tr.summary(now=6.0)
    assert s["badput_seconds"]["checkpoint_save"] == pytest.approx(1.5)
    assert s["restarts_by_reason"] == {"loss_spike": 1, "hang": 1} and s["last_failure_time"] == pytest.approx(5.0)
    assert s["wasted_progress_seconds"] == pytest.approx(2.0) and s["productive_seconds"] == 0.0
    assert s["step_flops"] == 1e12 and s["mfu"] == pytest.approx(1e12 / 2.0 / 2e12)
    assert s["grad_norm"] == 1.0 and s["peak_memory_bytes"] == 7
    ev = [e for e in read_events(str(tmp_path / EVENTS_FILE)) if e["ev"] == "badput"]
    assert ev[0]["step"] == 0 and ev[0]["blocking_s"] == 1.5
    tr.write_metrics_json()
    assert json.loads((tmp_path / "metrics.json").read_text())["restarts_total"] == 2
