"""The compiled pipeline: DAG edges, Kubernetes settings per step, images, caching and retries, and the golden
YAML (the local runner ignores Kubernetes settings, so they are asserted here on the compiled IR)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from soraflow.pipelines.dag import compile_pipeline
from soraflow.pipelines.settings import ClusterSettings

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "soraflow.yaml"
DIGEST = "@sha256:" + "ab" * 32
TRAIN_TASKS = {"vae-train-component", "hunyuan-vae-component", "dit-stage-component", "dit-stage-component-2", "dit-stage-component-3",
               "distill-component"}


def _compile(tmp_path, **settings):
    path = compile_pipeline(str(tmp_path / "p.yaml"), ClusterSettings(**settings))
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"], Path(path).read_text()


def _executor(spec, task):
    return spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")


def test_dag_edges_follow_the_design(tmp_path):
    spec, _, _ = _compile(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    names = {k: v["taskInfo"]["name"] for k, v in tasks.items()}
    deps = {names[k]: {names[d] for d in v.get("dependentTasks", [])} for k, v in tasks.items()}
    assert deps == {
        "ingest": set(), "filter": {"ingest"}, "split": {"filter"}, "vae_train": {"split"},
        "hunyuan_vae": {"split"}, "dit_stage1": {"split", "hunyuan_vae"},
        "dit_stage2": {"split", "dit_stage1", "hunyuan_vae"}, "dit_stage3": {"split", "dit_stage2", "hunyuan_vae"},
        "distill": {"split", "dit_stage3", "vae_train"},
        "eval": {"split", "dit_stage1", "dit_stage2", "dit_stage3", "distill", "vae_train", "hunyuan_vae"},
    }
    # stages 1-3 decode with the autoencoder step's Model artifact
    ae = tasks["dit-stage-component"]["inputs"]["artifacts"]["autoencoder"]["taskOutputArtifact"]
    assert ae == {"outputArtifactKey": "model", "producerTask": "hunyuan-vae-component"}
    # stage 2 starts from stage 1's Model artifact, distill from stage 3's and the DC-AE from vae_train
    s2 = tasks["dit-stage-component-2"]["inputs"]["artifacts"]["previous"]["taskOutputArtifact"]
    assert s2 == {"outputArtifactKey": "model", "producerTask": "dit-stage-component"}
    d = tasks["distill-component"]["inputs"]["artifacts"]
    assert d["teacher"]["taskOutputArtifact"]["producerTask"] == "dit-stage-component-3"
    assert d["autoencoder"]["taskOutputArtifact"]["producerTask"] == "vae-train-component"


@pytest.mark.parametrize("launcher", ["volcano", "in_pod"])
def test_kubernetes_settings_per_step(tmp_path, launcher):
    s = ClusterSettings(train_launcher=launcher)
    spec, k8s, _ = _compile(tmp_path, train_launcher=launcher)
    tasks = spec["root"]["dag"]["tasks"]
    gpu_tasks = {"eval-component"} | (TRAIN_TASKS if launcher == "in_pod" else set())
    for task in tasks:
        ex = _executor(spec, task)
        cfg = k8s[ex]
        container = spec["deploymentSpec"]["executors"][ex]["container"]
        assert cfg["pvcMount"][0]["mountPath"] == s.data_mount
        assert cfg["secretAsEnv"][0]["optional"] is True
        assert int(cfg["activeDeadlineSeconds"]) > 0
        if task in gpu_tasks:
            assert cfg["nodeSelector"]["labels"] == {s.pool_label: s.gpu_pool}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in cfg["tolerations"]
            assert {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": s.shm_size,
                    "volumeName": "dshm"} in cfg["emptyDirMounts"]
            acc = container["resources"]["accelerator"]
            gpus = 1 if task == "eval-component" else s.gpus_per_node  # eval samples on one GPU
            assert acc["resourceType"] == "nvidia.com/gpu" and int(acc["resourceCount"]) == gpus
        else:
            assert cfg["nodeSelector"]["labels"] == {s.pool_label: s.cpu_pool}
            assert "tolerations" not in cfg and "accelerator" not in container.get("resources", {})
            # CPU steps push their completion counts to the cluster's Pushgateway
            assert {"name": "SORAFLOW_PUSHGATEWAY", "value": s.pushgateway} in container["env"]
        # caching only for the deterministic CPU steps; retries only where a retry resumes from a checkpoint
        assert tasks[task].get("cachingOptions", {}).get("enableCache", False) == (task in {"ingest-component",
                                                                                           "filter-component",
                                                                                           "split-component"})
        assert ("retryPolicy" in tasks[task]) == (task in TRAIN_TASKS)


def test_images_and_no_runtime_installs(tmp_path):
    spec, _, text = _compile(tmp_path, cpu_image="r/cpu" + DIGEST, gpu_image="r/gpu" + DIGEST)
    for task in spec["root"]["dag"]["tasks"]:
        container = spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]
        expected = "r/cpu" if task in {"ingest-component", "filter-component", "split-component"} else "r/gpu"
        assert container["image"] == expected + DIGEST
    assert "pip install" not in text and "pip3 install" not in text
    # the Volcano job runs the same GPU image
    assert spec["root"]["dag"]["tasks"]["dit-stage-component"]["inputs"]["parameters"]["image"] == {
        "runtimeValue": {"constant": "r/gpu" + DIGEST}}


def test_release_refuses_tags(tmp_path):
    with pytest.raises(ValueError, match="gpu_image 'soraflow-gpu:dev' is not pinned by digest"):
        compile_pipeline(str(tmp_path / "p.yaml"), ClusterSettings(cpu_image="r/cpu" + DIGEST), release=True)
    compile_pipeline(str(tmp_path / "p.yaml"), ClusterSettings(cpu_image="r/cpu" + DIGEST,
                                                              gpu_image="r/gpu" + DIGEST), release=True)


def _normalise(text: str) -> str:
    return re.sub(r"^sdkVersion: .*$", "sdkVersion: <kfp>", text, flags=re.M)


def test_golden_compiled_pipeline_is_current(tmp_path):
    """The compiled YAML is a reviewed artifact: regenerate it with `soraflow compile` when the DAG changes."""
    _, _, text = _compile(tmp_path)
    assert GOLDEN.is_file(), "pipelines/compiled/soraflow.yaml missing: run `soraflow compile`"
    assert _normalise(text) == _normalise(GOLDEN.read_text()), (
        "pipelines/compiled/soraflow.yaml is stale: run `soraflow compile` and review the diff")


def test_default_recipes_exist_for_their_steps():
    from soraflow.pipelines.dag import CLUSTER_RECIPES, TINY_RECIPES
    from soraflow.pipelines.submit import recipe_params
    from soraflow.training.recipes import get_recipe

    for table in (TINY_RECIPES, CLUSTER_RECIPES):
        for step, name in table.items():
            assert get_recipe(name).stage == step, name
    assert recipe_params(CLUSTER_RECIPES)["stage3_recipe"] == "stage3-768px-sp4-h200x8"
    with pytest.raises(ValueError, match="is a dit_stage2 recipe, not a dit_stage1 one"):
        recipe_params({"dit_stage1": "stage2-256px-i2v-h200x8"})
    with pytest.raises(ValueError, match="unknown step"):
        recipe_params({"stage1": "stage1-256px-h200x8"})


def test_compile_cli_renders_gitops_manifests(tmp_path):
    from soraflow.cli.main import main

    assert main(["compile", "--out", str(tmp_path / "p.yaml"), "--k8s-manifests", str(tmp_path / "m")]) == 0
    docs = [yaml.safe_load(p.read_text()) for p in (tmp_path / "m").rglob("*.yaml") if p.name != "kustomization.yaml"]
    assert sorted(d["kind"] for d in docs) == ["Pipeline", "PipelineVersion"]
    assert all(d["apiVersion"] == "pipelines.kubeflow.org/v2beta1" for d in docs)


def test_ingest_cache_key_follows_the_manifest_content(tmp_path):
    """KFP keys ingest's cache on its inputs: the manifest digest is one (not only the manifest's path), and
    training launchers hand their data volume to the Volcano jobs they submit."""
    spec, _, _ = _compile(tmp_path)
    ingest = spec["root"]["dag"]["tasks"]["ingest-component"]["inputs"]["parameters"]
    assert ingest["raw_manifest_digest"] == {"componentInputParameter": "raw_manifest_digest"}
    s = ClusterSettings()
    for task in TRAIN_TASKS:
        container = spec["deploymentSpec"]["executors"][_executor(spec, task)]["container"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["SORAFLOW_DATA_PVC"] == s.data_pvc and env["SORAFLOW_DATA_MOUNT"] == s.data_mount, task
