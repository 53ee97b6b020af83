"""Every Kubernetes manifest under infra/ against its schema: built-in kinds with
kubernetes-validate (strict, offline schemas), custom kinds (Volcano Queue, Argo CD
Application, KFP Pipeline/PipelineVersion) against the fields their CRDs define."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from infra_helpers import GITOPS, TF_ROOT

import kubernetes_validate as kv  # noqa: E402  (declared in the test extra)

# What cluster_addons' local.runbook_base_url makes of the sample gitops_repo_url / gitops_revision below.
RUNBOOK_BASE = "https://github.com/o/r/blob/main/docs"
MANIFESTS = sorted(p for p in (GITOPS / "cluster").glob("*.yaml") if p.name != "kustomization.yaml")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_queue(doc):
    assert doc["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert "namespace" not in doc["metadata"], "Volcano Queue is cluster-scoped"
    spec = doc["spec"]
    assert set(spec) <= {"weight", "capability", "reclaimable", "deserved", "guarantee", "parent", "affinity", "type"}
    assert isinstance(spec["weight"], int) and spec["weight"] >= 1
    for value in spec["capability"].values():
        assert isinstance(value, str) and re.fullmatch(r"\d+", value)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_cluster_manifests_validate(path):
    for doc in _docs(path):
        assert DNS1123.match(doc["metadata"]["name"])
        if doc["kind"] == "Queue":
            _check_queue(doc)
            continue
        kv.validate(doc, kv.latest_version(), strict=True)
        assert doc["metadata"]["namespace"] == "kubeflow"


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((GITOPS / "cluster" / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in MANIFESTS)
    assert "namespace" not in k, "a namespace transformer would stamp the cluster-scoped Queue"


def test_nccl_env_disables_nvls():
    cm = _docs(GITOPS / "cluster" / "nccl-env.yaml")[0]
    assert cm["data"]["NCCL_NVLS_ENABLE"] == "0"
    assert all(isinstance(v, str) for v in cm["data"].values())


def test_ci_role_is_port_forward_only():
    role = next(d for d in _docs(GITOPS / "cluster" / "rbac-ci.yaml") if d["kind"] == "Role")
    verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert verbs == {("services", "get"), ("pods", "get"), ("pods", "list"), ("pods/portforward", "create")}


def _render_argocd_apps() -> list[dict]:
    """Render the Terraform template with sample values the way templatefile() would."""
    text = (TF_ROOT / "modules" / "cluster_addons" / "values" / "argocd-apps.yaml.tftpl").read_text()
    text = re.sub(r"%\{ if \w+ ~\}\n|%\{ endif ~\}\n", "", text)  # both flags on
    values = {
        "kfp_version": "2.17.1", "kfp_namespace": "kubeflow", "gitops_repo_url": "https://github.com/o/r.git",
        "gitops_revision": "main", "pipelines_revision": "kfp-manifests", "pipeline_root": "gs://b-pipeline-root",
        "pipeline_runner_gsa": "a@p.iam.gserviceaccount.com", "training_gsa": "t@p.iam.gserviceaccount.com",
        "ci_gsa": "c@p.iam.gserviceaccount.com", "training_ksa": "soraflow-training", "volcano_gpu_quota": "16",
        "runbook_base_url": RUNBOOK_BASE,
    }
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= set(values), f"template uses unknown {used - set(values)}"
    for k, v in values.items():
        text = text.replace("${" + k + "}", v)
    return yaml.safe_load(text)["applications"]


def test_argocd_applications_render_and_target_real_paths():
    apps = _render_argocd_apps()
    assert {"kfp-cluster-scoped", "kfp", "soraflow-cluster", "soraflow-monitoring", "soraflow-pipelines"} == set(apps)
    for name, app in apps.items():
        assert DNS1123.match(name)
        assert set(app) <= {"namespace", "annotations", "project", "source", "destination", "syncPolicy",
                            "ignoreDifferences", "finalizers", "labels"}
        assert app["destination"]["server"] == "https://kubernetes.default.svc"
        assert {"repoURL", "targetRevision", "path"} <= set(app["source"])
    assert apps["kfp"]["source"]["targetRevision"] == "2.17.1"
    assert apps["kfp"]["source"]["path"].endswith("platform-agnostic-k8s-native")
    assert apps["soraflow-cluster"]["source"]["path"] == "infra/gitops/cluster"
    assert (GITOPS / "cluster" / "kustomization.yaml").exists()
    # PipelineVersions are immutable and referenced by past runs: never pruned.
    assert apps["soraflow-pipelines"]["syncPolicy"]["automated"]["prune"] is False
    for patch in (p for app in apps.values() for p in app["source"].get("kustomize", {}).get("patches", [])):
        ops = yaml.safe_load(patch["patch"])
        assert all(op["op"] in {"add", "replace"} and op["path"].startswith("/") for op in ops)


def test_argocd_patches_hit_objects_in_the_cluster_manifests():
    apps = _render_argocd_apps()
    objects = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in _docs(p)}
    for patch in apps["soraflow-cluster"]["source"]["kustomize"]["patches"]:
        target = (patch["target"]["kind"], patch["target"]["name"])
        assert target in objects, f"patch target {target} does not exist in infra/gitops/cluster"


def test_monitoring_app_builds_the_monitoring_kustomization_with_repo_runbook_links(tmp_path):
    """Argo CD's soraflow-monitoring app: its path holds the kustomization (dashboards + monitoring/k8s), and
    its patch turns every alert's relative runbook link into this repository's blob URL at the synced
    revision. Argo CD applies an app's kustomize patches by adding them to the kustomization before the
    build, so the test does the same on a copy and builds it with the real kustomize."""
    import shutil

    from soraflow.monitoring.manifests import kustomize_build, kustomize_command
    from infra_helpers import REPO, tf_module

    main = (TF_ROOT / "modules" / "cluster_addons" / "main.tf").read_text()
    assert 'runbook_base_url = "${trimsuffix(var.gitops_repo_url, ".git")}/blob/${var.gitops_revision}/docs"' in main
    assert "runbook_base_url         = local.runbook_base_url" in main
    assert tf_module(TF_ROOT / "modules" / "cluster_addons")  # the module still parses

    app = _render_argocd_apps()["soraflow-monitoring"]
    src = REPO / app["source"]["path"]
    assert app["source"]["path"] == "monitoring" and (src / "kustomization.yaml").is_file()
    assert app["destination"]["namespace"] == "monitoring"
    if kustomize_command() is None:
        pytest.skip("needs kustomize or kubectl on PATH for the build: sudo make test-deps")
    work = tmp_path / "monitoring"
    work.mkdir()
    shutil.copy(src / "kustomization.yaml", work)
    for sub in ("k8s", "dashboards"):
        shutil.copytree(src / sub, work / sub)
    k = yaml.safe_load((work / "kustomization.yaml").read_text())
    k["patches"] = k.get("patches", []) + app["source"]["kustomize"]["patches"]
    (work / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    docs = kustomize_build(work)
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]
            if "alert" in r}
    assert len(urls) == 6
    assert urls == {name: f"{RUNBOOK_BASE}/runbooks.md#{name.lower()}" for name in urls}
    assert not [d for d in docs if d["metadata"]["name"] == "soraflow-runbook-base"]
