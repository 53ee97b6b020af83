#!/usr/bin/env python3
"""Render a compiled KFP pipeline (IR YAML) as Kubernetes-native KFP manifests.

KFP's Kubernetes-native pipeline store (KEP-11551, overlay
env/cert-manager/platform-agnostic-k8s-native) keeps pipelines as custom
resources of group pipelines.kubeflow.org/v2beta1, so Argo CD can sync them:

    <out>/<pipeline>/pipeline.yaml                  kind Pipeline
    <out>/<pipeline>/versions/<pipeline>-<hash>.yaml kind PipelineVersion
    <out>/kustomization.yaml                         every file above

PipelineVersions are immutable, so a version is named by a hash of its content:
rendering the same compiled pipeline twice yields the same file (no duplicate
version), a changed pipeline yields a new file beside the old ones, and old
versions, which past runs refer to, stay in git.

Only fields of the CRDs' schemas are written (the Pipeline CRD has no
displayName): a field the API server prunes would leave Argo CD forever
OutOfSync.

    python infra/gitops/render_kfp_manifests.py pipelines/compiled/soraflow.yaml \
        --out-dir kfp-manifests --display-name "$GITHUB_SHA" --code-source-url URL
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "pipelines.kubeflow.org/v2beta1"
# Kubernetes DNS-1123 subdomain: what metadata.name of both kinds must be.
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HASH_LEN = 12


class ManifestError(ValueError):
    """The compiled pipeline or an option cannot make valid manifests."""


def load_compiled(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return (pipeline_spec, platform_spec or None) from a KFP-compiled YAML file."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: cannot read compiled pipeline: {e}") from e
    if not docs or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise ManifestError(f"{path}: not a compiled KFP pipeline (first document lacks pipelineInfo/root)")
    if len(docs) > 2:
        raise ManifestError(f"{path}: expected a PipelineSpec and at most one PlatformSpec, found {len(docs)} documents")
    platform = docs[1] if len(docs) == 2 else None
    if platform is not None and "platforms" not in platform:
        raise ManifestError(f"{path}: second document is not a PlatformSpec (no 'platforms' key)")
    return docs[0], platform


def content_hash(pipeline_spec: dict[str, Any], platform_spec: dict[str, Any] | None) -> str:
    """Hash of what the cluster would run; sdkVersion is left out so an SDK patch bump is not a new version."""
    spec = {k: v for k, v in pipeline_spec.items() if k != "sdkVersion"}
    canonical = json.dumps({"pipelineSpec": spec, "platformSpec": platform_spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LEN]


def _check_name(name: str, what: str) -> None:
    if len(name) > 253 or not _DNS1123.match(name):
        raise ManifestError(
            f"{what} {name!r} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', at most 253)"
        )


def render(
    pipeline_spec: dict[str, Any],
    platform_spec: dict[str, Any] | None,
    *,
    pipeline_name: str | None = None,
    namespace: str = "kubeflow",
    description: str = "",
    display_name: str = "",
    code_source_url: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (Pipeline, PipelineVersion) manifests as dicts."""
    name = pipeline_name or pipeline_spec["pipelineInfo"]["name"]
    _check_name(name, "pipeline name")
    version_name = f"{name}-{content_hash(pipeline_spec, platform_spec)}"
    _check_name(version_name, "pipeline version name")
    description = description or pipeline_spec["pipelineInfo"].get("description", "")

    pipeline: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Pipeline",
        # Wave 0: the version webhook rejects a PipelineVersion whose Pipeline does not exist yet.
        "metadata": {"name": name, "namespace": namespace, "annotations": {"argocd.argoproj.io/sync-wave": "0"}},
        "spec": {"description": description} if description else {},
    }
    spec: dict[str, Any] = {"pipelineName": name, "pipelineSpec": pipeline_spec}
    if platform_spec:
        spec["platformSpec"] = platform_spec
    if display_name:
        spec["displayName"] = display_name
    if description:
        spec["description"] = description
    if code_source_url:
        spec["codeSourceURL"] = code_source_url
    version = {
        "apiVersion": API_VERSION,
        "kind": "PipelineVersion",
        "metadata": {
            "name": version_name,
            "namespace": namespace,
            "labels": {"soraflow.io/pipeline": name},
            "annotations": {"argocd.argoproj.io/sync-wave": "1"},
        },
        "spec": spec,
    }
    return pipeline, version


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=True, width=120)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_tree(out_dir: Path, pipeline: dict[str, Any], version: dict[str, Any]) -> Path:
    """Write the manifests under out_dir, keep earlier versions, refresh kustomization.yaml; return the version file."""
    name = pipeline["metadata"]["name"]
    _write_atomic(out_dir / name / "pipeline.yaml", _dump(pipeline))
    version_file = out_dir / name / "versions" / f"{version['metadata']['name']}.yaml"
    _write_atomic(version_file, _dump(version))
    resources = sorted(str(p.relative_to(out_dir)) for p in out_dir.glob("*/pipeline.yaml"))
    resources += sorted(str(p.relative_to(out_dir)) for p in out_dir.glob("*/versions/*.yaml"))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    _write_atomic(out_dir / "kustomization.yaml", _dump(kustomization))
    return version_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compiled", type=Path, help="compiled pipeline YAML (kfp IR)")
    ap.add_argument("--out-dir", type=Path, required=True, help="root of the manifest tree Argo CD syncs")
    ap.add_argument("--pipeline-name", help="Pipeline resource name (default: pipelineInfo.name)")
    ap.add_argument("--namespace", default="kubeflow")
    ap.add_argument("--description", default="")
    ap.add_argument("--display-name", default="", help="shown in the KFP UI, e.g. the git commit")
    ap.add_argument("--code-source-url", default="", help="link to the commit that produced the pipeline")
    args = ap.parse_args(argv)
    try:
        spec, platform = load_compiled(args.compiled)
        pipeline, version = render(
            spec,
            platform,
            pipeline_name=args.pipeline_name,
            namespace=args.namespace,
            description=args.description,
            display_name=args.display_name,
            code_source_url=args.code_source_url,
        )
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_tree(args.out_dir, pipeline, version)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
