"""kube-prometheus-stack manifests: schema (monitoring.coreos.com/v1 subset), selectors vs the pods
training/launch.py creates, and the PrometheusRule generated from the promtool-tested rules file."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from soraflow.monitoring.manifests import PROMETHEUS_RULE, RULES_FILE, SCHEMA_FILE, load_manifests, render_prometheus_rule
from soraflow.monitoring.metrics import DEFAULT_TRAINER_PORT

import jsonschema  # noqa: E402  (declared in the test extra)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def manifests():
    docs = load_manifests()
    assert {d["kind"] for _, d in docs} == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    return docs


def _by_name(manifests, name):
    return next(d for _, d in manifests if d["metadata"]["name"] == name)


def test_manifests_match_the_crd_schema(validator, manifests):
    for path, doc in manifests:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name}: {errors}"
        # kube-prometheus-stack's default selectors pick objects by the release label.
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack", path.name


def test_schema_rejects_what_the_operator_would_drop_or_refuse(validator, manifests):
    pm = _by_name(manifests, "soraflow-trainer")
    bad = []
    typo = copy.deepcopy(pm)
    typo["spec"]["podMetricEndpoints"] = typo["spec"].pop("podMetricsEndpoints")  # silently pruned by the CRD
    bad.append(typo)
    dur = copy.deepcopy(pm)
    dur["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    bad.append(dur)
    nosel = copy.deepcopy(pm)
    del nosel["spec"]["selector"]
    bad.append(nosel)
    rule = copy.deepcopy(_by_name(manifests, "soraflow"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    bad.append(rule)
    for doc in bad:
        assert not validator.is_valid(doc)


def test_prometheus_rule_is_generated_from_the_rules_file(manifests):
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        "monitoring/k8s/prometheusrule.yaml is stale: run `python -m soraflow.monitoring.manifests`")
    rule = _by_name(manifests, "soraflow")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


def _matches(selector: dict, labels: dict) -> bool:
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        ok &= {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
               "Exists": has, "DoesNotExist": not has}[e["operator"]]
    return ok


def test_pod_monitor_selects_rank0_pod_of_the_launched_job(manifests):
    from soraflow.training.launch import LaunchSpec, kubernetes_dryrun

    job = kubernetes_dryrun(LaunchSpec(recipe="stage1-256px-h200x8", run_dir="/ckpt/run1", nnodes=2,
                                       nproc_per_node=8, gpus_per_node=8)).resource
    pods = [t["template"] for t in job["spec"]["tasks"]]
    pm = _by_name(manifests, "soraflow-trainer")
    selected = [_matches(pm["spec"]["selector"], p.metadata.labels) for p in pods]
    assert selected == [True, False]  # replica 0 hosts global rank 0, the only exporter

    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    assert port == "metrics"
    ports = {p.name: p.container_port for c in pods[0].spec.containers for p in (c.ports or [])}
    assert ports.get(port) == DEFAULT_TRAINER_PORT  # the launcher's port_map names the exporter's port


def test_service_monitors_keep_pushed_labels(manifests):
    pgw = _by_name(manifests, "soraflow-pushgateway")
    assert all(e["honorLabels"] for e in pgw["spec"]["endpoints"])  # job/run_id/stage of the pushing step
    dcgm = _by_name(manifests, "soraflow-dcgm-exporter")
    assert dcgm["spec"]["selector"]["matchLabels"] == {"app": "nvidia-dcgm-exporter"}
