"""Kubernetes manifests for kube-prometheus-stack (monitoring/k8s/).

``monitoring/k8s/prometheusrule.yaml`` is generated from ``monitoring/rules/soraflow.rules.yml`` (the file
promtool tests), so the cluster runs the tested rules; a test checks the two stay identical. Regenerate with
``python -m soraflow.monitoring.manifests``. ``monitoring/kustomization.yaml`` deploys these objects together with one
Grafana dashboard ConfigMap per ``monitoring/dashboards/*.json`` (:func:`kustomize_build` renders it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from soraflow.common.atomic import write_text_atomic

MONITORING_DIR = Path(__file__).resolve().parent
K8S_DIR = MONITORING_DIR / "k8s"
RULES_FILE = MONITORING_DIR / "rules" / "soraflow.rules.yml"
PROMETHEUS_RULE = K8S_DIR / "prometheusrule.yaml"
SCHEMA_FILE = K8S_DIR / "schema" / "monitoring.coreos.com_v1.subset.json"

_HEADER = ("# GENERATED from monitoring/rules/soraflow.rules.yml by `python -m soraflow.monitoring.manifests`; do not edit.\n"
           "# kube-prometheus-stack loads PrometheusRules whose labels match its ruleSelector (release=...).\n")


def prometheus_rule(rules_file: Path = RULES_FILE) -> dict:
    groups = yaml.safe_load(Path(rules_file).read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "soraflow", "labels": {"app.kubernetes.io/part-of": "soraflow",
                                                    "release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }


class _BlockDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    # Multi-line PromQL stays a `|` block as in the rules file, so the two read the same in review.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


def render_prometheus_rule(rules_file: Path = RULES_FILE) -> str:
    return _HEADER + yaml.dump(prometheus_rule(rules_file), Dumper=_BlockDumper, sort_keys=False, width=1000)


def load_manifests(folder: Path = K8S_DIR) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(Path(folder).glob("*.yaml")):
        out.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


KUSTOMIZATION_DIR = MONITORING_DIR  # monitoring/kustomization.yaml: what Argo CD's soraflow-monitoring app builds


def kustomize_command() -> list[str] | None:
    """``kustomize build`` or ``kubectl kustomize`` (kubectl bundles kustomize), whichever is on PATH."""
    import shutil

    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_build(folder: Path = KUSTOMIZATION_DIR) -> list[dict]:
    """The objects ``folder``'s kustomization renders (what Argo CD applies), by the real kustomize."""
    import subprocess

    cmd = kustomize_command()
    if cmd is None:
        raise RuntimeError("neither kustomize nor kubectl is on PATH")
    p = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} {folder} failed:\n{p.stderr[-2000:]}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def main() -> int:
    write_text_atomic(PROMETHEUS_RULE, render_prometheus_rule())
    print(PROMETHEUS_RULE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
