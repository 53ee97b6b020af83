"""Grafana dashboards reach the cluster: monitoring/kustomization.yaml (Argo CD's soraflow-monitoring app)
makes one ConfigMap per dashboards/*.json with the label kube-prometheus-stack's Grafana sidecar watches
(read from the chart values Terraform installs), holding the dashboard JSON byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from soraflow.monitoring.manifests import K8S_DIR, KUSTOMIZATION_DIR, kustomize_build, kustomize_command, load_manifests

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
KUSTOMIZATION = KUSTOMIZATION_DIR / "kustomization.yaml"
CHART_VALUES = (ROOT / "infra" / "terraform" / "modules" / "cluster_addons" / "values"
                / "kube-prometheus-stack.yaml.tftpl")
# Argo CD applies with client-side apply: the whole object is copied into the last-applied annotation,
# and a ConfigMap's annotations may total 256 KiB at most.
ANNOTATION_LIMIT = 262144
needs_kustomize = pytest.mark.skipif(kustomize_command() is None, reason="needs kustomize or kubectl on PATH: sudo make test-deps")


def _sidecar() -> dict:
    # The template's only ${...} are scalar values (retention, storage size): any value parses.
    text = re.sub(r"\$\{\w+\}", "x", CHART_VALUES.read_text())
    return yaml.safe_load(text)["grafana"]["sidecar"]["dashboards"]


def _kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def _dashboard_generators() -> list[dict]:
    return [g for g in _kustomization()["configMapGenerator"] if g["name"].startswith("soraflow-dashboard-")]


def test_kustomization_lists_every_manifest_and_every_dashboard():
    k = _kustomization()
    # Argo CD builds this kustomization instead of reading k8s/ as a folder: a manifest it does not list
    # would silently stop being applied.
    assert sorted(k["resources"]) == sorted(f"k8s/{p.name}" for p in K8S_DIR.glob("*.yaml"))
    files = [f for g in _dashboard_generators() for f in g["files"]]
    assert sorted(files) == sorted(f"dashboards/{p.name}" for p in DASHBOARDS)
    assert len(DASHBOARDS) == 3
    for f in files:
        assert (KUSTOMIZATION_DIR / f).is_file(), f
    for g in _dashboard_generators():
        assert len(g["files"]) == 1, g  # one dashboard per ConfigMap: each stays far below the size limit
        assert g["name"] == "soraflow-dashboard-" + Path(g["files"][0]).stem


def test_dashboard_label_is_the_one_the_grafana_sidecar_watches():
    sidecar = _sidecar()
    assert sidecar["enabled"] is True
    assert sidecar["searchNamespace"] == "ALL"  # the ConfigMaps live in the app's namespace (monitoring)
    for g in _dashboard_generators():
        labels = g["options"]["labels"]
        assert labels[sidecar["label"]] == str(sidecar["labelValue"]) == "1"
        if sidecar.get("folderAnnotation"):
            assert sidecar["provider"]["foldersFromFilesStructure"] is True  # else the annotation is inert
            assert g["options"]["annotations"][sidecar["folderAnnotation"]] == "soraflow"


@needs_kustomize
def test_kustomize_renders_one_valid_dashboard_configmap_per_file():
    import kubernetes_validate as kv

    docs = kustomize_build()
    sidecar = _sidecar()
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"
           and d["metadata"].get("labels", {}).get(sidecar["label"]) == str(sidecar["labelValue"])}
    assert set(cms) == {f"soraflow-dashboard-{p.stem}" for p in DASHBOARDS}
    uids = set()
    for path in DASHBOARDS:
        cm = cms[f"soraflow-dashboard-{path.stem}"]
        kv.validate(cm, kv.latest_version(), strict=True)
        assert list(cm["data"]) == [path.name]
        assert cm["data"][path.name] == path.read_text()  # the file itself, not a re-serialisation
        dash = json.loads(cm["data"][path.name])
        assert dash["uid"] and dash["title"] and dash["panels"] and "templating" in dash
        uids.add(dash["uid"])
        assert len(json.dumps(cm).encode()) < ANNOTATION_LIMIT, path.name
    assert len(uids) == len(DASHBOARDS)  # Grafana keeps one dashboard per uid: a duplicate would hide one


@needs_kustomize
def test_kustomize_keeps_the_monitoring_objects_and_drops_the_runbook_base():
    built = {(d["kind"], d["metadata"]["name"]): d for d in kustomize_build()}
    assert ("ConfigMap", "soraflow-runbook-base") not in built  # local-config: an input, never applied
    for path, doc in load_manifests():
        got = built[(doc["kind"], doc["metadata"]["name"])]
        if doc["kind"] != "PrometheusRule":
            assert got == doc, path.name
            continue
        # Only the runbook links change: the relative link's leading "docs" becomes the base.
        base = next(lit for g in _kustomization()["configMapGenerator"] if g["name"] == "soraflow-runbook-base"
                    for lit in g["literals"]).split("=", 1)[1]
        for want_g, got_g in zip(doc["spec"]["groups"], got["spec"]["groups"], strict=True):
            for want_r, got_r in zip(want_g["rules"], got_g["rules"], strict=True):
                if "alert" in want_r:
                    rel = want_r["annotations"]["runbook_url"]
                    assert got_r["annotations"]["runbook_url"] == base + rel.removeprefix("docs")
                    want_r = {**want_r, "annotations": {**want_r["annotations"],
                                                        "runbook_url": got_r["annotations"]["runbook_url"]}}
                assert got_r == want_r
