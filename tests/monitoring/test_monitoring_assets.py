"""Monitoring assets: Prometheus config, rules (promtool), Grafana dashboards, metric names and labels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from soraflow.monitoring import metrics as m

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
RULES = MON / "rules" / "soraflow.rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RULE_TESTS = sorted((MON / "rules" / "tests").glob("*.yml"))
DASHBOARDS = sorted((MON / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs Debian promtool (package prometheus): sudo make test-deps")


def _promtool(*args: str) -> str:
    p = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@needs_promtool
def test_promtool_check_config():
    _promtool("check", "config", "monitoring/prometheus.yml")


@needs_promtool
def test_promtool_check_rules():
    _promtool("check", "rules", str(RULES.relative_to(ROOT)))


@needs_promtool
def test_promtool_test_rules():
    assert RULE_TESTS
    _promtool("test", "rules", *[str(p.relative_to(ROOT)) for p in RULE_TESTS])


# ---------------------------------------------------------------------------- collected expressions
def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard_targets() -> list[tuple[str, dict]]:
    out = []
    for path in DASHBOARDS:
        for p in json.loads(path.read_text())["panels"]:
            for t in p.get("targets", []):
                out.append((path.name, t))
    return out


def _exprs() -> list[tuple[str, str]]:
    exprs = [(f"rule {r.get('record') or r.get('alert')}", r["expr"]) for r in _rules()]
    exprs += [(f"{name} {t['refId']}", t["expr"]) for name, t in _dashboard_targets()]
    for path in DASHBOARDS:
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v.get("type") == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                exprs.append((f"{path.name} var {v['name']}", q))
    return exprs


def _exported_names() -> set[str]:
    """Sample names a TrainingMetrics and a BatchMetrics registry actually expose once populated."""
    tm = m.TrainingMetrics("r1", "t2v_256", "h100")
    summary = {key: 1.0 for key, _ in m._SUMMARY_GAUGES.values()}
    summary.update(badput_seconds={"init": 1.0}, restarts_by_reason={"oom": 1}, steps_recorded=1, recovery_count=1)
    tm.update_from_summary(summary)
    tm.observe_checkpoint_save(0.1, 0.5, ok=True)
    tm.set_build_info()
    bm = m.BatchMetrics("r1", "filter", "default")
    bm.record(clips_in=3, clips_kept=2, rejected_by_reason={"too_short": 1}, duration_s=1.0)
    names: set[str] = set()
    for reg in (tm.registry, bm.registry):
        for fam in text_string_to_metric_families(generate_latest(reg).decode()):
            names.update(s.name for s in fam.samples)
    return names


_NAME = re.compile(r"(?<![\w:$])([a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+|soraflow_[a-zA-Z0-9_]+|DCGM_[A-Z0-9_]+)")


def test_metric_names_are_exported_or_dcgm():
    exported = _exported_names()
    assert "soraflow_train_restarts_total" in exported and "soraflow_batch_clips_in" in exported
    recorded = {r["record"] for r in _rules() if "record" in r}
    used: set[str] = set()
    for where, expr in _exprs():
        for name in _NAME.findall(expr):
            used.add(name)
            ok = name in exported or name in recorded or name.startswith("DCGM_")
            assert ok, f"{where}: {name} is neither exported by monitoring/metrics.py, recorded, nor DCGM_"
    # Every recording rule is used by an alert or a dashboard panel.
    assert recorded <= used, recorded - used


def test_dashboards_use_templated_datasource():
    assert {p.name for p in DASHBOARDS} >= {"training.json", "data.json", "gpus.json"}
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        ds_vars = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
        assert [v["name"] for v in ds_vars] == ["datasource"], path.name
        assert ds_vars[0]["query"] == "prometheus"
        panels = [p for p in d["panels"] if p["type"] != "row"]
        assert panels, path.name
        for p in panels:
            assert p["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
            assert p["targets"], (path.name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}", (path.name, v["name"])


def _labels_in(expr: str) -> set[str]:
    labels: set[str] = set()
    for grp in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in grp.split(",") if x.strip())
    for sel in re.findall(r"\{([^{}]*)\}", expr):
        labels.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", sel))
    labels.update(re.findall(r"label_values\([^,]*,\s*(\w+)\s*\)", expr))
    return labels


def test_no_forbidden_labels():
    forbidden = set(m.FORBIDDEN_LABELS)
    for where, expr in _exprs():
        bad = _labels_in(expr) & forbidden
        assert not bad, f"{where}: forbidden label(s) {bad}"
    for r in _rules():
        assert not set(r.get("labels", {})) & forbidden, r
        for text in r.get("annotations", {}).values():
            assert not set(re.findall(r"\$labels\.(\w+)", text)) & forbidden, r
    for name, t in _dashboard_targets():
        assert not set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", ""))) & forbidden, (name, t)


def test_label_helper_sees_labels():
    # Guard against a vacuous forbidden-label check.
    assert _labels_in('sum by (run_id, step) (x{path="a", stage=~"b"})') == {"run_id", "step", "path", "stage"}


# ---------------------------------------------------------------------------- metric types of the batch push
BATCH_FAMILIES = {"soraflow_batch_clips_in", "soraflow_batch_clips_kept", "soraflow_batch_clips_rejected",
                  "soraflow_batch_step_duration_seconds", "soraflow_batch_last_success_timestamp_seconds",
                  "soraflow_build_info"}


def test_batch_push_is_gauges_of_the_run_not_counters():
    """A batch step pushes its final numbers once: gauges (no `_total`, no `_created`), set, not added."""
    bm = m.BatchMetrics("r1", "filter_256", "default")
    bm.record(clips_in=3, clips_kept=2, rejected_by_reason={"blur": 1}, duration_s=1.5, finished_at=100.0)
    bm.record(clips_in=10, clips_kept=7, rejected_by_reason={"blur": 3}, duration_s=2.5, finished_at=200.0)
    text = generate_latest(bm.registry).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(fams) == BATCH_FAMILIES
    assert {f.type for f in fams.values()} == {"gauge"}  # the build Info is exposed as a gauge too
    samples = {(s.name, s.labels.get("reason")): s.value for f in fams.values() for s in f.samples}
    assert not [n for n, _ in samples if n.endswith(("_total", "_created"))]
    # the second record() replaced the first: absolute values of one run
    assert samples[("soraflow_batch_clips_in", None)] == 10
    assert samples[("soraflow_batch_clips_kept", None)] == 7
    assert samples[("soraflow_batch_clips_rejected", "blur")] == 3
    assert samples[("soraflow_batch_step_duration_seconds", None)] == 2.5
    assert samples[("soraflow_batch_last_success_timestamp_seconds", None)] == 200.0
    if PROMTOOL:  # Prometheus' own naming lint (e.g. a non-counter ending in _total is an error)
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr


def test_batch_grouping_key_is_job_and_stage_only():
    # The run is a label of the series, not part of the group: the next run's PUT replaces this one.
    assert m.batch_grouping_key("filter_256") == {"stage": "filter_256"}


# ---------------------------------------------------------------------------- alerts: for, annotations, runbooks
def _github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_sections() -> dict[str, tuple[str, str]]:
    text = RUNBOOKS.read_text()
    out = {}
    for chunk in text.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        out[_github_anchor(heading)] = (heading.strip(), body)
    return out


def test_github_anchor_helper():
    assert _github_anchor("GPUXidErrors") == "gpuxiderrors"
    assert _github_anchor("What to do, now!") == "what-to-do-now"


def test_every_alert_has_for_summary_description_and_a_runbook_section():
    sections = _runbook_sections()
    alerts = [r for r in _rules() if "alert" in r]
    assert len(alerts) == 6
    for r in alerts:
        name = r["alert"]
        assert re.fullmatch(r"([1-9]\d*[smh])+", str(r.get("for", ""))), f"{name}: needs a non-zero `for:`"
        ann = r.get("annotations", {})
        assert ann.get("summary", "").strip() and ann.get("description", "").strip(), name
        url = ann.get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md" and (ROOT / path).is_file(), f"{name}: runbook_url {url!r}"
        assert anchor in sections, f"{name}: no section #{anchor} in docs/runbooks.md"
        heading, body = sections[anchor]
        assert heading == name
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in body, f"docs/runbooks.md#{anchor} lacks {part}"
    # and no runbook section is left for an alert that no longer exists
    assert set(sections) == {r["alert"].lower() for r in alerts}
    # links between sections point at sections that exist
    for _, body in sections.values():
        for link in re.findall(r"\]\(#([\w-]+)\)", body):
            assert link in sections, link
