"""Terraform structure, checked statically: every file parses, every variable is typed and
described, the GPU pools are tainted/labelled/scale from zero, buckets are private and
versioned, and no identity gets a primitive role."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from infra_helpers import (
    TF_DIRS,
    TF_ROOT,
    all_resources,
    module_calls,
    one,
    outputs,
    parse_tf,
    resources,
    tf_module,
    variables,
)

ROOT = tf_module(TF_ROOT)
MODULES = {d.name: tf_module(d) for d in TF_DIRS[1:]}


def test_terraform_fmt_check():
    tf = shutil.which("terraform")
    if tf is None:
        pytest.skip("terraform binary not on PATH (not packaged by Debian or PyPI; install HashiCorp's release): "
                    "fmt -check runs in the GitHub CI infra job")
    r = subprocess.run([tf, "fmt", "-check", "-recursive", "-diff", str(TF_ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, f"terraform fmt would change files:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("path", sorted(TF_ROOT.rglob("*.tf")) + sorted(TF_ROOT.rglob("*.tfvars")), ids=str)
def test_every_file_parses(path):
    assert isinstance(parse_tf(path), dict)


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda d: d.name)
def test_every_variable_has_description_and_type(directory):
    vs = variables(tf_module(directory))
    assert vs, f"{directory} declares no variables"
    for name, body in vs.items():
        assert str(body.get("description", "")).strip(), f"{directory.name}: variable {name} has no description"
        assert "type" in body, f"{directory.name}: variable {name} has no type"


@pytest.mark.parametrize("directory", TF_DIRS, ids=lambda d: d.name)
def test_every_output_has_description(directory):
    for name, body in outputs(tf_module(directory)).items():
        assert str(body.get("description", "")).strip(), f"{directory.name}: output {name} has no description"


def test_constrained_root_variables_are_validated():
    vs = variables(ROOT)
    for name in [
        "project_id", "region", "cluster_name", "cpu_zones", "subnet_cidr", "pods_cidr", "services_cidr",
        "master_ipv4_cidr_block", "master_authorized_networks", "release_channel", "cpu_pool", "gpu_pools",
        "bucket_name_prefix", "pipeline_root_retention_days", "kfp_version", "github_repository",
        "gitops_repo_url", "prometheus_retention", "volcano_gpu_quota",
    ]:
        assert "validation" in vs[name], f"variable {name} takes constrained values but has no validation"


def test_module_calls_match_module_interfaces():
    """Every argument passed to a local module is one of its variables, and every variable without default is passed."""
    for call, body in module_calls(ROOT).items():
        src = body["source"]
        assert src.startswith("./modules/"), f"module {call}: unexpected source {src}"
        mod = MODULES[src.removeprefix("./modules/")]
        declared = variables(mod)
        passed = {k for k in body if k not in {"source", "for_each", "count", "depends_on", "providers"}}
        assert passed <= set(declared), f"module {call} passes undeclared inputs {passed - set(declared)}"
        required = {n for n, v in declared.items() if "default" not in v}
        assert required <= passed, f"module {call} misses required inputs {required - passed}"


def test_module_outputs_used_by_root_exist():
    text = "\n".join(p.read_text() for p in TF_ROOT.glob("*.tf"))
    calls = module_calls(ROOT)
    for call, attr in set(re.findall(r"module\.(\w+)(?:\[[^\]]*\])?\.(\w+)", text)):
        mod = MODULES[calls[call]["source"].removeprefix("./modules/")]
        assert attr in outputs(mod), f"module.{call}.{attr} is used but module has no such output"
    # gpu_pools iterates with for_each: `for k, m in module.gpu_pools : ... m.node_selector`
    assert "node_selector" in outputs(MODULES["gpu_node_pool"])


# ---- GPU node pool ---------------------------------------------------------

POOL = resources(MODULES["gpu_node_pool"], "google_container_node_pool")["this"]
NODE = one(POOL["node_config"])


def test_gpu_pool_has_gpu_taint_noschedule():
    taints = NODE["taint"]
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"} in taints


def test_gpu_pool_has_pool_label():
    locals_ = {k: v for b in MODULES["gpu_node_pool"]["locals"] for k, v in b.items()}
    assert NODE["labels"] == "${local.pool_labels}"
    assert '"soraflow.io/pool" = var.name' in locals_["pool_labels"]


def test_gpu_pool_accelerator_type_count_and_managed_driver():
    acc = one(NODE["guest_accelerator"])
    assert acc["type"] == "${var.accelerator_type}"
    assert acc["count"] == "${var.accelerator_count}"
    assert one(acc["gpu_driver_installation_config"])["gpu_driver_version"] == "${var.gpu_driver_version}"


def test_gpu_pool_autoscales_from_zero():
    auto = one(POOL["autoscaling"])
    assert auto["total_min_node_count"] == "${var.min_nodes}"
    assert POOL["initial_node_count"] == 0
    gpu_pools = variables(ROOT)["gpu_pools"]
    assert "min_nodes          = optional(number, 0)" in gpu_pools["type"] or "optional(number, 0)" in str(gpu_pools["type"])


def test_gpu_pool_compact_placement_spot_and_single_zone():
    dyn = {k: v for d in POOL["dynamic"] for k, v in d.items()}
    assert one(dyn["placement_policy"]["content"])["type"] == "COMPACT"
    assert NODE["spot"] == "${var.spot}"
    assert POOL["node_locations"] == ["${var.zone}"]
    assert one(NODE["workload_metadata_config"])["mode"] == "GKE_METADATA"


def test_default_gpu_pool_is_h100_a3_highgpu_8g():
    default = variables(ROOT)["gpu_pools"]["default"]["gpu-h100"]  # pipelines/settings.py gpu_pool
    assert default["machine_type"] == "a3-highgpu-8g"
    assert default["accelerator_type"] == "nvidia-h100-80gb"


TFVARS = sorted((TF_ROOT / "tfvars_examples").glob("*.tfvars"))


@pytest.mark.parametrize("path", TFVARS, ids=lambda p: p.name)
def test_tfvars_examples_use_declared_variables_and_idle_at_zero(path):
    values = parse_tf(path)
    declared = variables(ROOT)
    assert set(values) <= set(declared), f"{path.name}: unknown variables {set(values) - set(declared)}"
    required = {n for n, v in declared.items() if "default" not in v}
    assert required <= set(values), f"{path.name}: misses required variables {required - set(values)}"
    for name, pool in values["gpu_pools"].items():
        assert pool.get("min_nodes", 0) == 0, f"{path.name}: GPU pool {name} does not scale to zero"
        if pool.get("compact_placement", True):
            assert pool["accelerator_type"].startswith("nvidia-h100"), f"{path.name}: compact placement on {name}"


def test_tfvars_examples_cover_h200():
    assert any("nvidia-h200-141gb" in p.read_text() for p in TFVARS)


# ---- buckets, registry, IAM ------------------------------------------------

def test_buckets_are_versioned_private_and_have_lifecycle_rules():
    storage = MODULES["storage"]
    buckets = resources(storage, "google_storage_bucket")
    assert set(buckets) == {"this"}
    b = buckets["this"]
    assert one(b["versioning"])["enabled"] is True
    assert b["uniform_bucket_level_access"] is True
    assert b["public_access_prevention"] == "enforced"
    assert b["force_destroy"] is False
    actions = [one(r["action"])["type"] for r in b["lifecycle_rule"]]
    assert "Delete" in actions and "AbortIncompleteMultipartUpload" in actions
    locals_ = {k: v for blk in storage["locals"] for k, v in blk.items()}
    assert set(locals_["buckets"]) == {"dvc", "pipeline_root", "checkpoints"}


def test_registry_tags_are_immutable_with_cleanup():
    repo = resources(MODULES["registry"], "google_artifact_registry_repository")["images"]
    assert repo["format"] == "DOCKER"
    assert one(repo["docker_config"])["immutable_tags"] is True
    assert len(repo["cleanup_policies"]) >= 2


PRIMITIVE = re.compile(r"roles/(owner|editor|viewer)\b")
IAM_TYPES = re.compile(r"_iam_(member|binding|policy)$")


def test_no_primitive_roles_or_public_members():
    for directory in TF_DIRS:
        for rtype, name, body in all_resources(tf_module(directory)):
            if not IAM_TYPES.search(rtype):
                continue
            text = str(body)
            assert not PRIMITIVE.search(text), f"{directory.name}: {rtype}.{name} grants a primitive role"
            assert "allUsers" not in text and "allAuthenticatedUsers" not in text, f"{rtype}.{name} is public"
            if rtype.endswith("_iam_policy"):
                pytest.fail(f"{rtype}.{name}: authoritative IAM policies would drop others' grants")
    for p in TF_ROOT.rglob("*.tf"):
        code = "\n".join(line.split("#", 1)[0] for line in p.read_text().splitlines())
        assert not PRIMITIVE.search(code), f"{p} grants a primitive role"


def test_storage_grants_are_per_bucket_not_project_wide():
    identity = MODULES["identity"]
    project_roles = [one([b])["role"] for b in resources(identity, "google_project_iam_member").values()]
    assert project_roles == ["roles/container.clusterViewer"], project_roles
    assert not any("storage" in r for r in project_roles)
    grants = {k: v for blk in identity["locals"] for k, v in blk.items()}["bucket_grants"]
    # Pipelines may add data versions to the DVC remote but never delete them.
    dvc_roles = {g["role"] for g in grants.values() if g["bucket"] == "dvc"}
    assert dvc_roles <= {"roles/storage.objectViewer", "roles/storage.objectCreator"}


def test_ci_federation_is_restricted_to_repository_and_branch():
    provider = resources(MODULES["identity"], "google_iam_workload_identity_pool_provider")["github"]
    cond = provider["attribute_condition"]
    # The sub claim pins repository and branch; checkov CKV_GCP_125 checks the same.
    assert "assertion.sub == 'repo:${var.github_repository}:ref:refs/heads/${var.github_branch}'" in cond


def test_nodes_do_not_run_as_default_compute_service_account():
    gke = MODULES["gke_cluster"]
    pool = resources(gke, "google_container_node_pool")["cpu"]
    assert one(pool["node_config"])["service_account"] == "${google_service_account.nodes.email}"
    assert POOL["node_config"][0]["service_account"] == "${var.node_service_account}"


def test_cluster_is_private_with_workload_identity():
    cluster = resources(MODULES["gke_cluster"], "google_container_cluster")["this"]
    assert one(cluster["private_cluster_config"])["enable_private_nodes"] is True
    assert "workload_pool" in one(cluster["workload_identity_config"])
    assert cluster["remove_default_node_pool"] is True


def test_addons_are_pinned():
    addons = MODULES["cluster_addons"]
    releases = resources(addons, "helm_release")
    for want in ["cert_manager", "volcano", "kube_prometheus_stack", "dcgm_exporter", "argocd", "argocd_apps"]:
        assert want in releases, f"missing helm release {want}"
        assert releases[want]["version"].startswith("${var."), f"{want} is not pinned by a variable"
    defaults = variables(ROOT)
    assert re.fullmatch(r"2\.\d+\.\d+", defaults["kfp_version"]["default"])


def test_readme_tables_list_every_input_and_output():
    readme = (TF_ROOT.parent / "README.md").read_text()
    inputs = readme.split("## Inputs", 1)[1].split("## Outputs", 1)[0]
    outs = readme.split("## Outputs", 1)[1].split("\n## ", 1)[0]
    for name in variables(ROOT):
        assert f"| `{name}` |" in inputs, f"infra/README.md inputs table lacks {name}"
    for name in outputs(ROOT):
        assert f"| `{name}` |" in outs, f"infra/README.md outputs table lacks {name}"
    assert "idle" in readme.lower() and "min_nodes = 0" in readme
