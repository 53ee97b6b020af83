"""Debian's Prometheus and Pushgateway on loopback, configured from the project's files.

Used by ``soraflow monitor`` (a local run to be watched) and by the integration test (real servers, free
ports). The Prometheus config is generated from ``monitoring/prometheus.yml`` (same jobs, same rules file)
with the ports and intervals of this session, so what runs locally is what is checked by promtool.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from soraflow.common.atomic import write_text_atomic
from soraflow.monitoring.metrics import DEFAULT_PROMETHEUS_PORT, DEFAULT_PUSHGATEWAY_PORT, DEFAULT_TRAINER_PORT

MONITORING_DIR = Path(__file__).resolve().parent
PROMETHEUS_YML = MONITORING_DIR / "prometheus.yml"
RULES_FILE = MONITORING_DIR / "rules" / "soraflow.rules.yml"
PROMETHEUS_BIN = "prometheus"
PUSHGATEWAY_BIN = "prometheus-pushgateway"


class MonitoringError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MonitoringError(f"{name} not found on PATH; install the Debian package "
                              f"({'prometheus-pushgateway' if name == PUSHGATEWAY_BIN else 'prometheus'})")
    return path


def prometheus_config(*, trainer_targets: list[str], pushgateway_target: str, dcgm_targets: list[str] | None = None,
                      scrape_interval: str | None = None, evaluation_interval: str | None = None,
                      rules_file: Path = RULES_FILE) -> dict:
    """``monitoring/prometheus.yml`` with these targets (and intervals); the rules file by absolute path."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    if scrape_interval:
        cfg["global"]["scrape_interval"] = scrape_interval
    if evaluation_interval:
        cfg["global"]["evaluation_interval"] = evaluation_interval
    cfg["rule_files"] = [str(Path(rules_file).resolve())]
    targets = {"soraflow-trainer": trainer_targets, "pushgateway": [pushgateway_target],
               "dcgm-exporter": dcgm_targets}
    jobs = []
    for job in cfg["scrape_configs"]:
        want = targets.get(job["job_name"], job["static_configs"][0]["targets"])
        if want:  # a job without targets (no DCGM on this machine) is left out
            job["static_configs"] = [{"targets": list(want)}]
            jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


@dataclass
class LocalMonitoring:
    """Prometheus + Pushgateway processes on 127.0.0.1; use as a context manager (stops both)."""

    workdir: Path
    prometheus_port: int = DEFAULT_PROMETHEUS_PORT
    pushgateway_port: int = DEFAULT_PUSHGATEWAY_PORT
    trainer_targets: list[str] = field(default_factory=lambda: [f"127.0.0.1:{DEFAULT_TRAINER_PORT}"])
    dcgm_targets: list[str] | None = None
    scrape_interval: str | None = None
    evaluation_interval: str | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def pushgateway_url(self) -> str:
        return f"http://127.0.0.1:{self.pushgateway_port}"

    @property
    def config_path(self) -> Path:
        return Path(self.workdir) / "prometheus.yml"

    def write_config(self) -> Path:
        cfg = prometheus_config(trainer_targets=self.trainer_targets,
                                pushgateway_target=f"127.0.0.1:{self.pushgateway_port}",
                                dcgm_targets=self.dcgm_targets, scrape_interval=self.scrape_interval,
                                evaluation_interval=self.evaluation_interval)
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        return write_text_atomic(self.config_path, yaml.safe_dump(cfg, sort_keys=False))

    def start(self, timeout: float = 30.0) -> LocalMonitoring:
        prom, pgw = find_binary(PROMETHEUS_BIN), find_binary(PUSHGATEWAY_BIN)
        self.write_config()
        wd = Path(self.workdir)
        try:
            # Debian's build persists to /var/lib/prometheus/pushgateway.data by default, shared by every
            # instance on the machine: keep ours in the work dir (kept across `soraflow monitor` restarts).
            self._spawn([pgw, f"--web.listen-address=127.0.0.1:{self.pushgateway_port}",
                         f"--persistence.file={wd / 'pushgateway.data'}"], wd / "pushgateway.log")
            self._spawn([prom, f"--config.file={self.config_path}", f"--storage.tsdb.path={wd / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                         "--web.enable-lifecycle"], wd / "prometheus.log")
            self._wait_ready(f"{self.pushgateway_url}/-/ready", wd / "pushgateway.log", timeout)
            self._wait_ready(f"{self.prometheus_url}/-/ready", wd / "prometheus.log", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, cmd: list[str], log: Path) -> None:
        with open(log, "ab") as f:
            # Own session: Ctrl-C in `soraflow monitor` reaches us first, and we stop the servers in order.
            self.procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_ready(self, url: str, log: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise MonitoringError(f"{p.args[0]} exited with {p.returncode}; see {log}:\n"
                                          f"{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise MonitoringError(f"{url} not ready after {timeout:.0f}s; see {log}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Prometheus flushes its head block), then SIGKILL whatever is still up after ``timeout``."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()

    def __enter__(self) -> LocalMonitoring:
        return self.start() if not self.procs else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- Prometheus HTTP API
    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; returns ``data.result`` (a list of ``{"metric": {...}, "value": [t, "v"]}``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("query", params)["result"]

    def _api(self, path: str, params: dict | None = None) -> dict:
        url = f"{self.prometheus_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise MonitoringError(f"Prometheus {path} {params}: HTTP {e.code}: {e.read().decode()[:500]}") from e
        if body.get("status") != "success":
            raise MonitoringError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def targets(self) -> list[dict]:
        return self._api("targets")["activeTargets"]

    def rule_groups(self) -> list[dict]:
        return self._api("rules")["groups"]

    def alerts(self) -> list[dict]:
        return self._api("alerts")["alerts"]

    def pushgateway_groups(self) -> list[dict[str, str]]:
        """Grouping labels of every group the Pushgateway holds (its /api/v1/metrics)."""
        with urllib.request.urlopen(f"{self.pushgateway_url}/api/v1/metrics", timeout=10) as r:
            body = json.load(r)
        return [g["labels"] for g in body["data"]]


def serve_until_interrupted(mon: LocalMonitoring, *, out=None) -> None:
    """``soraflow monitor``: start, print the URLs, run until Ctrl-C / SIGTERM (or a server dies), stop both."""
    import signal
    import sys

    out = out or sys.stdout

    def _stop(signum, frame):  # SIGTERM (e.g. `kill`) takes the same clean path as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        mon.start()
        print(f"prometheus   {mon.prometheus_url}  (config {mon.config_path}, rules {RULES_FILE})", file=out)
        print(f"pushgateway  {mon.pushgateway_url}  (batch steps: --pushgateway 127.0.0.1:{mon.pushgateway_port})",
              file=out)
        print(f"scraping trainer at {', '.join(mon.trainer_targets)} (train with --override metrics_port="
              f"{DEFAULT_TRAINER_PORT}); Ctrl-C stops", file=out, flush=True)
        while True:
            for p in mon.procs:
                if p.poll() is not None:
                    raise MonitoringError(f"{p.args[0]} exited with {p.returncode}; logs in {mon.workdir}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping prometheus and pushgateway", file=out, flush=True)
    finally:
        mon.stop()
        signal.signal(signal.SIGTERM, previous)
