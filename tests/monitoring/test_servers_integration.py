"""Real servers on loopback: Debian Prometheus scraping a tiny trainer that crashes and recovers, and a
Pushgateway holding a batch step's completion metrics. Known truth: the run's own goodput log (metrics.json
and a replay of goodput_events.jsonl).

Tolerance: values cross the exposition format as shortest-repr floats (exact), and the recording rule does
the same float64 division as the tracker, so Prometheus and the log agree to 1e-9 relative.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soraflow.monitoring.batch import filter_groups, push_groups
from soraflow.monitoring.local import LocalMonitoring, free_port
from soraflow.training.goodput import EVENTS_FILE, read_events, summarize_events

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "soraflow.rules.yml"
pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")),
    reason="needs Debian prometheus and prometheus-pushgateway: sudo make test-deps")

RUN_ID = "it-crash"
CKPT_EVERY = 2
REL = 1e-9


def _value(results: list[dict]) -> float:
    assert len(results) == 1, results
    return float(results[0]["value"][1])


def _wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    wd = tmp_path_factory.mktemp("monitoring")
    trainer_port = free_port()
    mon = LocalMonitoring(wd, prometheus_port=free_port(), pushgateway_port=free_port(),
                          trainer_targets=[f"127.0.0.1:{trainer_port}"], scrape_interval="1s",
                          evaluation_interval="1s")
    with mon:
        mon.trainer_port = trainer_port
        procs = list(mon.procs)
        assert len(procs) == 2
        yield mon
    assert all(p.poll() is not None for p in procs)  # the test stops the servers


PHASE1_STEPS = 2


@pytest.fixture(scope="module")
def crashed_run(stack, tmp_path_factory):
    """One run (one run_dir, one goodput log), two launches of tiny-cpu-stage1 on 1 process:

    1. steps 1-2, a clean end; its exporter lingers, so Prometheus holds pre-crash numbers of the run (a crashed
       attempt alone may live shorter than a scrape interval);
    2. resumes at 2; kill -9 of rank 0 (the exporter's own process) after step 3; torchrun restarts it, it
       resumes from the step-2 checkpoint, redoes 3, finishes at 4 and re-serves on the same port.
    """
    from soraflow.training.data.fixtures import make_video_table

    d = tmp_path_factory.mktemp("run")
    specs = [{"kind": "video", "num_frames": 24, "height": 64, "width": 64, "fps": 24, "text": f"clip {i}"}
             for i in range(4)]
    table = str(make_video_table(d / "clips", specs))
    run_dir = d / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SORAFLOW_CACHE": str(d / "cache"),
           "SORAFLOW_METRICS_LINGER_S": "3"}  # 3 scrape and evaluation intervals: the final numbers get in
    env.pop("SORAFLOW_CHAOS_KILL", None)
    t0 = time.monotonic()
    for max_steps, chaos in ((PHASE1_STEPS, None), (4, "0:3")):
        cmd = [sys.executable, "-m", "soraflow.cli", "train", "--recipe", "tiny-cpu-stage1", "--run-dir",
               str(run_dir), "--nproc", "1", "--max-restarts", "1", "--override", f"data.table={json.dumps(table)}",
               "--override", f"max_steps={max_steps}", "--override", f"checkpoint.ckpt_every={CKPT_EVERY}",
               "--override", "samples.every=0", "--override", f"metrics_port={stack.trainer_port}",
               "--override", f"run_id={json.dumps(RUN_ID)}"]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                             env={**env, "SORAFLOW_CHAOS_KILL": chaos} if chaos else env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / ".chaos-killed-rank0-step3").exists()
    print(f"training, 2 launches, one crash + recovery: {time.monotonic() - t0:.1f}s")
    return run_dir


def _last(stack, expr: str, window: str = "10m") -> list[dict]:
    # The trainer has exited: its series are stale now, so read each one's last sample over a range.
    return stack.query(f"last_over_time({expr}[{window}])")


def test_training_goodput_restarts_recovery_in_prometheus(stack, crashed_run):
    truth = json.loads((crashed_run / "metrics.json").read_text())
    events = read_events(str(crashed_run / EVENTS_FILE))
    replay = summarize_events(events)
    sel = f'{{run_id="{RUN_ID}"}}'

    # The final scrape (the lingering exporter's numbers after the attempt closed: its wall time is final).
    _wait_for(lambda: [r for r in _last(stack, f"soraflow_train_wall_seconds{sel}")
                       if float(r["value"][1]) == truth["wall_seconds"]], 20, "the final wall_seconds")
    assert _value(_last(stack, f"soraflow_train_steps_total{sel}")) == truth["steps_recorded"]

    # Restarts = 1, by reason, from the restarted process's replay of the log.
    restarts = _last(stack, f"soraflow_train_restarts_total{sel}")
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in restarts} == {
        "worker_failure": 1.0, "loss_spike": 0.0, "hang": 0.0, "preemption": 0.0}  # known reasons start at 0
    assert truth["restarts_by_reason"] == {"worker_failure": 1}
    # because the series existed (at 0) before the crash, increase() sees the first restart (RestartLoop's input)
    seen = stack.query(f'increase(soraflow_train_restarts_total{{{sel[1:-1]},reason="worker_failure"}}[10m])')
    assert _value(seen) > 0.5
    labels = restarts[0]["metric"]
    assert (labels["stage"], labels["recipe"], labels["job"]) == ("dit_stage1", "tiny-cpu-stage1", "soraflow-trainer")

    # Totals survive the restart: Prometheus saw the run before the crash (launch 1's final numbers) and the
    # cumulative counters never went back across the process changes (kill -9, a new process on the same port).
    # (any steps_total <= PHASE1_STEPS is from before the crash: the restarted process replays 3 steps)
    assert _value(stack.query(f"min_over_time(soraflow_train_steps_total{sel}[10m])")) <= PHASE1_STEPS
    assert truth["attempts"] == 3
    assert _value(stack.query(f"resets(soraflow_train_steps_total{sel}[10m])")) == 0
    assert _value(stack.query(f'max_over_time(soraflow_train_restarts_total{{{sel[1:-1]},reason="worker_failure"}}[10m])')) == 1

    # Recovery time recorded (> 0) and equal to the log's.
    rec = _value(_last(stack, f"soraflow_train_last_recovery_seconds{sel}"))
    assert rec > 0 and rec == pytest.approx(truth["recovery_seconds_last"], rel=REL)
    assert _value(_last(stack, f"soraflow_train_recoveries_total{sel}")) == 1

    # Wasted progress: at most the steps after the resumed checkpoint, i.e. <= ckpt_every steps' time.
    step_times = [ev["seconds"] for ev in events if ev["ev"] == "step"]
    wasted = _value(_last(stack, f'soraflow_train_badput_seconds{{run_id="{RUN_ID}", kind="wasted_progress"}}'))
    assert 0 < wasted <= CKPT_EVERY * max(step_times)
    assert wasted == pytest.approx(truth["wasted_progress_seconds"], rel=REL)

    # Goodput in (0, 1], equal to the run's accounting (metrics.json and a replay of the event log).
    goodput = _value(_last(stack, f"soraflow_train_goodput_ratio{sel}"))
    assert 0 < goodput <= 1
    assert goodput == pytest.approx(truth["goodput_ratio"], rel=REL)
    assert goodput == pytest.approx(replay["goodput_ratio"], rel=REL)
    badput = {r["metric"]["kind"]: float(r["value"][1]) for r in _last(stack, f"soraflow_train_badput_seconds{sel}")}
    assert badput == pytest.approx(truth["badput_seconds"], rel=REL)
    wall = _value(_last(stack, f"soraflow_train_wall_seconds{sel}"))
    # Build info of the trainer process (version from package metadata, commit from env or the checkout).
    build = _last(stack, 'soraflow_build_info{job="soraflow-trainer"}')
    assert len(build) == 1 and {"version", "git_commit", "image_digest"} <= set(build[0]["metric"])
    productive = _value(_last(stack, f"soraflow_train_productive_seconds{sel}"))
    assert productive + sum(badput.values()) == pytest.approx(wall, rel=1e-6)


def test_recording_rules_evaluate_on_the_real_rules_file(stack, crashed_run):
    import yaml

    want = {g["name"]: [r.get("record") or r.get("alert") for r in g["rules"]]
            for g in yaml.safe_load(RULES.read_text())["groups"]}
    groups = stack.rule_groups()
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == want
    assert {g["file"] for g in groups} == {str(RULES.resolve())}
    for g in groups:
        for r in g["rules"]:
            assert r["health"] == "ok" and not r.get("lastError"), (g["name"], r["name"], r.get("lastError"))

    truth = json.loads((crashed_run / "metrics.json").read_text())
    sel = f'{{run_id="{RUN_ID}"}}'
    # The recorded goodput is the tracker's ratio (its evaluation after the final scrape).
    _wait_for(lambda: [r for r in _last(stack, f"soraflow:train_goodput:ratio{sel}")
                       if float(r["value"][1]) == pytest.approx(truth["goodput_ratio"], rel=REL)],
              10, "soraflow:train_goodput:ratio at the run's final value")
    assert _value(_last(stack, f"soraflow:train_recovery_seconds:last{sel}")) == pytest.approx(
        truth["recovery_seconds_last"], rel=REL)
    shares = {r["metric"]["kind"]: float(r["value"][1])
              for r in _last(stack, f"soraflow:train_badput:ratio_by_kind{sel}")}
    assert shares == pytest.approx({k: v / truth["wall_seconds"] for k, v in truth["badput_seconds"].items()},
                                   rel=1e-6)
    assert _last(stack, f"soraflow:train_restarts:increase1h{sel}")  # evaluated (its value depends on timing)
    assert _value(_last(stack, f"soraflow:train_steps:rate5m{sel}")) > 0


def _firing(stack, alertname: str) -> set[tuple[str, str]]:
    return {(a["labels"]["run_id"], a["labels"]["stage"]) for a in stack.alerts()
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"}


def test_batch_push_fires_filter_drop_rate_and_a_newer_run_ends_it(stack):
    """The real rules file on real servers: an old run's bad filter result fires FilterDropRateHigh (after its
    `for:`), and the next run's push of the same step replaces the Pushgateway group, so the old run's alert
    stops (its series end) while Prometheus keeps the old run's numbers for the dashboards."""
    import yaml

    rules = {r.get("alert"): r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    rule = rules["FilterDropRateHigh"]
    # A filter run's counts (the shape FilterResult.counts has): 10 clips, 3 kept at 256px, 1 of those at 768px.
    counts = {"input": 10, "kept_256": 3, "kept_768": 1, "rejected_256": {"motion": 5, "blur": 2},
              "rejected_768": {"256px": 7, "aesthetic": 2}}
    pushed = push_groups(stack.pushgateway_url, "filter", filter_groups(counts, seconds=12.5), run_id="it-old",
                         recipe="default")
    assert pushed == ["filter_256", "filter_768"]
    t_push = time.monotonic()
    # One group per job + stage, the run only a label of the series.
    groups = [g for g in stack.pushgateway_groups() if g.get("job") == "filter"]
    assert sorted(g["stage"] for g in groups) == ["filter_256", "filter_768"]
    assert not [g for g in groups if "run_id" in g]

    # Scraped through the Pushgateway with the pushed labels kept (honor_labels); gauges, no _total.
    got = _wait_for(lambda: stack.query('soraflow_batch_clips_in{run_id="it-old"}'), 15, "pushed series")
    assert {(r["metric"]["job"], r["metric"]["stage"], float(r["value"][1])) for r in got} == {
        ("filter", "filter_256", 10.0), ("filter", "filter_768", 3.0)}
    rej = stack.query('soraflow_batch_clips_rejected{run_id="it-old", stage="filter_256"}')
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in rej} == {"motion": 5.0, "blur": 2.0}
    assert _value(stack.query('soraflow_batch_step_duration_seconds{run_id="it-old", stage="filter_256"}')) == 12.5
    assert not stack.query('{__name__=~"soraflow_batch_.*_(total|created)"}')

    # The alert's own expression against the pushed data: 7/10 and 2/3 are > 0.5, and the pushes are fresh.
    hits = _wait_for(lambda: stack.query(rule["expr"]), 15, "FilterDropRateHigh expression")
    assert {(r["metric"]["run_id"], r["metric"]["stage"]): float(r["value"][1]) for r in hits} == pytest.approx(
        {("it-old", "filter_256"): 0.7, ("it-old", "filter_768"): 2 / 3})

    # Prometheus fires it once `for:` has passed, for both levels of the old run.
    assert rule["for"] == "1m"
    assert _wait_for(lambda: _firing(stack, "FilterDropRateHigh"), 90, "FilterDropRateHigh firing") == {
        ("it-old", "filter_256"), ("it-old", "filter_768")}
    assert time.monotonic() - t_push >= 60

    # A newer run of the same step (most clips kept) pushes: it replaces both groups.
    good = {"input": 10, "kept_256": 9, "kept_768": 9, "rejected_256": {"blur": 1}, "rejected_768": {"256px": 1}}
    push_groups(stack.pushgateway_url, "filter", filter_groups(good, seconds=3.0), run_id="it-new", recipe="default")
    groups = [g for g in stack.pushgateway_groups() if g.get("job") == "filter"]
    assert sorted(g["stage"] for g in groups) == ["filter_256", "filter_768"]  # still two groups, not four

    def old_gone():
        active = {(a["labels"]["run_id"], a["labels"]["stage"]) for a in stack.alerts()
                  if a["labels"]["alertname"] == "FilterDropRateHigh"}
        return not stack.query('soraflow_batch_clips_in{run_id="it-old"}') and not active

    _wait_for(old_gone, 20, "the old run's series and its FilterDropRateHigh alert to end")
    new = stack.query('soraflow:batch_clips_rejected:ratio{job="filter"}')
    assert {(r["metric"]["run_id"], r["metric"]["stage"]): float(r["value"][1]) for r in new} == pytest.approx(
        {("it-new", "filter_256"): 0.1, ("it-new", "filter_768"): 0.0})
    # Prometheus still has the old run's numbers (the dashboards' history); only the gateway forgot them.
    old = _last(stack, 'soraflow_batch_clips_in{run_id="it-old", stage="filter_256"}')
    assert _value(old) == 10.0


def test_ingest_cli_pushes_its_counts(stack, tmp_path):
    """`soraflow ingest --pushgateway`: a 3 s video (kept) and a 1 s one (rejected: duration), counted by
    source; the pushed series reach Prometheus with the CLI's own numbers."""
    from soraflow.training.data.fixtures import make_video_table

    make_video_table(tmp_path / "raw", [{"num_frames": 72, "fps": 24, "name": "long"},
                                        {"num_frames": 24, "fps": 24, "name": "short"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SORAFLOW_RUN_ID": "it-ingest"}
    res = subprocess.run([sys.executable, "-m", "soraflow.cli", "ingest", str(tmp_path / "raw"), "--out-dir",
                          str(tmp_path / "ingested"), "--no-progress", "--workers", "1", "--min-bpp", "0",
                          "--scene-threshold", "100",  # the fixture's frames change colour every frame: no cuts
                          "--pushgateway", stack.pushgateway_url.removeprefix("http://")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pushed ingest metrics" in res.stderr, res.stderr[-2000:]
    report = json.loads(next(line for line in res.stderr.splitlines() if line.startswith("{")))
    assert report["rejected"] == {"duration": 1} and report["clips"] >= 1

    assert {"job": "ingest", "stage": "ingest"} in stack.pushgateway_groups()  # no run_id: the next run replaces it
    sel = '{job="ingest", run_id="it-ingest", stage="ingest"}'
    got = _wait_for(lambda: stack.query(f"soraflow_batch_clips_in{sel}"), 15, "ingest series")
    assert _value(got) == 2
    assert _value(stack.query(f"soraflow_batch_clips_kept{sel}")) == 1
    rej = stack.query(f"soraflow_batch_clips_rejected{sel}")
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in rej} == {
        k: float(v) for k, v in report["rejected"].items()}
    assert _value(stack.query(f"soraflow_batch_step_duration_seconds{sel}")) == pytest.approx(
        report["seconds"], abs=1e-3)
