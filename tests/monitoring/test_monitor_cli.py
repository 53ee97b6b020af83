"""`soraflow monitor`: real Debian servers on loopback with the project's config and rules; Ctrl-C stops both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from soraflow.monitoring.local import free_port, prometheus_config

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


def test_generated_config_keeps_the_project_jobs_and_rules(tmp_path):
    cfg = prometheus_config(trainer_targets=["127.0.0.1:19464"], pushgateway_target="127.0.0.1:19091",
                            scrape_interval="1s", evaluation_interval="1s")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"soraflow-trainer", "pushgateway"}  # no DCGM target given: job left out
    assert jobs["soraflow-trainer"]["static_configs"] == [{"targets": ["127.0.0.1:19464"]}]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert cfg["rule_files"] == [str(ROOT / "monitoring" / "rules" / "soraflow.rules.yml")]
    if PROMTOOL:
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        p = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")),
                    reason="needs Debian prometheus and prometheus-pushgateway: sudo make test-deps")
def test_monitor_starts_both_servers_and_stops_on_ctrl_c(tmp_path):
    prom, pgw = free_port(), free_port()
    cmd = [sys.executable, "-m", "soraflow.cli", "monitor", "--data-dir", str(tmp_path / "mon"),
           "--prometheus-port", str(prom), "--pushgateway-port", str(pgw)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops" in x for x in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        assert f"http://127.0.0.1:{prom}" in out and f"http://127.0.0.1:{pgw}" in out
        assert "127.0.0.1:9464" in out  # the trainer's exporter port convention
        with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        assert {g["name"] for g in groups} == {"soraflow.training.recording", "soraflow.batch.recording",
                                               "soraflow.alerts"}
        with urllib.request.urlopen(f"http://127.0.0.1:{pgw}/-/ready", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + rest
    assert "stopping" in rest
    for port in (prom, pgw):  # both servers are gone
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
