"""`soraflow compile`: the pipeline as KFP IR YAML (the golden files in pipelines/compiled/), and
optionally its GitOps manifests."""

from __future__ import annotations

import sys
from pathlib import Path

from soraflow.cli.common import add_cluster_flags, cluster_settings



def _renderer() -> Path | None:
    """infra/gitops/render_kfp_manifests.py of the checkout this package sits in (None in an installed wheel)."""
    for folder in Path(__file__).resolve().parents:
        script = folder / "infra" / "gitops" / "render_kfp_manifests.py"
        if script.is_file():
            return script
    return None


def add(sub) -> None:
    p = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    p.add_argument("--start", choices=["raw", "revision"], default="raw",
                   help="raw: curate from a manifest; revision: the retraining pipeline from a data.dvc revision")
    p.add_argument("--out", help="default pipelines/compiled/soraflow.yaml (soraflow-retrain.yaml for revision)")
    p.add_argument("--k8s-manifests", metavar="DIR",
                   help="also render KFP Pipeline/PipelineVersion manifests for GitOps (Argo CD) into DIR")
    add_cluster_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from soraflow.pipelines.dag import compile_pipeline
    from soraflow.pipelines.submit import pipeline_name

    out = args.out or f"pipelines/compiled/{pipeline_name(args.start)}.yaml"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    print(compile_pipeline(out, cluster_settings(args), release=args.release, start=args.start))
    if args.k8s_manifests:
        import subprocess

        renderer = _renderer()
        if renderer is None:
            raise FileNotFoundError("infra/gitops/render_kfp_manifests.py: --k8s-manifests needs a checkout of "
                                    "the repository")
        subprocess.run([sys.executable, str(renderer), out, "--out-dir", args.k8s_manifests], check=True)
        print(args.k8s_manifests)
    return 0
