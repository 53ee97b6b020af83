"""The Argo CD manifest generator on a tiny pipeline compiled here with kfp (not the
project's pipeline): output matches the KFP v2beta1 CRDs, versions are content-addressed,
and the spec is the compiled IR unchanged.

No `from __future__ import annotations` here: kfp reads the component signatures at runtime."""

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from infra_helpers import GITOPS, REPO

import kfp  # noqa: E402
from kfp import compiler, dsl  # noqa: E402

SCRIPT = GITOPS / "render_kfp_manifests.py"
spec = importlib.util.spec_from_file_location("render_kfp_manifests", SCRIPT)
render_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_mod)

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Fields of the pipelines.kubeflow.org/v2beta1 CRDs (kubeflow/pipelines manifests/kustomize/base/crds).
PIPELINE_SPEC_FIELDS = {"description"}
VERSION_SPEC_FIELDS = {
    "codeSourceURL", "description", "displayName", "pipelineName", "pipelineSpec", "pipelineSpecURI", "platformSpec",
}


@dsl.component(base_image="python:3.11-slim")
def add(a: int, b: int) -> int:
    return a + b


def _compile(tmp_path, name: str, with_gpu: bool = False, b: int = 2):
    @dsl.pipeline(name=name, description="tiny test pipeline")
    def tiny(a: int = 1):
        t = add(a=a, b=b)
        if with_gpu:
            from kfp import kubernetes

            t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            kubernetes.add_toleration(t, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")

    out = tmp_path / f"{name}-{with_gpu}-{b}.yaml"
    compiler.Compiler().compile(tiny, str(out))
    return out


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO)


def _load(path):
    return yaml.safe_load(path.read_text())


def test_renders_pipeline_and_version_matching_the_crds(tmp_path):
    compiled = _compile(tmp_path, "tiny-pipeline")
    out = tmp_path / "manifests"
    r = _run(compiled, "--out-dir", out, "--display-name", "abc123", "--code-source-url", "https://x/commit/abc")
    assert r.returncode == 0, r.stderr

    pipeline = _load(out / "tiny-pipeline" / "pipeline.yaml")
    assert pipeline["apiVersion"] == "pipelines.kubeflow.org/v2beta1"
    assert pipeline["kind"] == "Pipeline"
    assert pipeline["metadata"] == {
        "name": "tiny-pipeline", "namespace": "kubeflow", "annotations": {"argocd.argoproj.io/sync-wave": "0"},
    }
    # The Pipeline CRD has no displayName: a pruned field would keep Argo CD OutOfSync.
    assert set(pipeline["spec"]) <= PIPELINE_SPEC_FIELDS
    assert pipeline["spec"]["description"] == "tiny test pipeline"

    (version_file,) = (out / "tiny-pipeline" / "versions").glob("*.yaml")
    version = _load(version_file)
    assert version["kind"] == "PipelineVersion"
    name = version["metadata"]["name"]
    assert DNS1123.match(name) and len(name) <= 253 and name.startswith("tiny-pipeline-")
    assert version_file.name == f"{name}.yaml"
    assert set(version["spec"]) <= VERSION_SPEC_FIELDS
    assert version["spec"]["pipelineName"] == "tiny-pipeline"
    assert version["spec"]["displayName"] == "abc123"
    assert version["spec"]["codeSourceURL"] == "https://x/commit/abc"
    # The spec is the compiled IR, unchanged.
    assert version["spec"]["pipelineSpec"] == _load(compiled)
    assert "platformSpec" not in version["spec"]

    kustomization = _load(out / "kustomization.yaml")
    assert kustomization["resources"] == ["tiny-pipeline/pipeline.yaml", f"tiny-pipeline/versions/{name}.yaml"]


def test_platform_spec_is_carried_over(tmp_path):
    compiled = _compile(tmp_path, "tiny-gpu", with_gpu=True)
    docs = list(yaml.safe_load_all(compiled.read_text()))
    assert len(docs) == 2, "kfp should emit a PlatformSpec for the toleration"
    pipeline, version = render_mod.render(*render_mod.load_compiled(compiled))
    assert version["spec"]["platformSpec"] == docs[1]
    tol = str(version["spec"]["platformSpec"])
    assert "nvidia.com/gpu" in tol


def test_same_pipeline_same_version_changed_pipeline_new_version(tmp_path):
    out = tmp_path / "m"
    a = _compile(tmp_path, "tiny-pipeline", b=2)
    assert _run(a, "--out-dir", out).returncode == 0
    assert _run(a, "--out-dir", out).returncode == 0  # idempotent: no duplicate immutable version
    assert len(list((out / "tiny-pipeline" / "versions").glob("*.yaml"))) == 1

    b = _compile(tmp_path, "tiny-pipeline", b=3)
    assert _run(b, "--out-dir", out).returncode == 0
    versions = sorted((out / "tiny-pipeline" / "versions").glob("*.yaml"))
    assert len(versions) == 2, "a changed pipeline gets a new version; the old one stays"
    resources = _load(out / "kustomization.yaml")["resources"]
    assert len(resources) == 3


def test_hash_ignores_sdk_version():
    spec_a = {"pipelineInfo": {"name": "p"}, "root": {}, "sdkVersion": "kfp-2.17.0"}
    spec_b = dict(spec_a, sdkVersion="kfp-2.17.3")
    assert render_mod.content_hash(spec_a, None) == render_mod.content_hash(spec_b, None)
    assert render_mod.content_hash(spec_a, None) != render_mod.content_hash(spec_a, {"platforms": {}})


def test_matches_what_kfp_itself_emits_for_the_spec(tmp_path):
    """kfp's own --kubernetes-manifest-format output carries the same pipelineSpec and names."""
    from kfp.compiler.compiler_utils import KubernetesManifestOptions

    @dsl.pipeline(name="tiny-pipeline")
    def tiny(a: int = 1):
        add(a=a, b=2)

    ours = tmp_path / "ir.yaml"
    theirs = tmp_path / "k8s.yaml"
    compiler.Compiler().compile(tiny, str(ours))
    compiler.Compiler().compile(
        tiny, str(theirs), kubernetes_manifest_format=True,
        kubernetes_manifest_options=KubernetesManifestOptions(include_pipeline_manifest=True, namespace="kubeflow"),
    )
    kfp_docs = {d["kind"]: d for d in yaml.safe_load_all(theirs.read_text())}
    _, version = render_mod.render(*render_mod.load_compiled(ours))
    assert kfp_docs["PipelineVersion"]["apiVersion"] == version["apiVersion"]
    assert kfp_docs["PipelineVersion"]["spec"]["pipelineName"] == version["spec"]["pipelineName"]
    assert kfp_docs["PipelineVersion"]["spec"]["pipelineSpec"] == version["spec"]["pipelineSpec"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not: [a, pipeline]\n", "not a compiled KFP pipeline"),
        ("pipelineInfo: {name: p}\nroot: {}\n---\nfoo: 1\n", "not a PlatformSpec"),
        (":\n  - [", "cannot read"),
    ],
)
def test_bad_input_names_the_file(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = _run(bad, "--out-dir", tmp_path / "o")
    assert r.returncode == 2
    assert message in r.stderr and "bad.yaml" in r.stderr
    assert not (tmp_path / "o").exists()


def test_invalid_pipeline_name_is_rejected(tmp_path):
    compiled = _compile(tmp_path, "tiny-pipeline")
    r = _run(compiled, "--out-dir", tmp_path / "o", "--pipeline-name", "Not_Valid")
    assert r.returncode == 2 and "not a valid Kubernetes name" in r.stderr
