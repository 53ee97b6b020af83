# One Google service account per workload, each bound to exactly one Kubernetes
# service account (Workload Identity) or to this repository's GitHub workflows on
# main (Workload Identity Federation). Permissions are granted on the individual
# bucket or repository, never project-wide storage or editor roles.

locals {
  workloads = {
    pipeline_runner = {
      account_id   = "${var.name_prefix}-kfp-runner"
      display_name = "KFP pipeline runner (soraflow)"
      ksa          = "${var.kfp_namespace}/pipeline-runner"
    }
    training = {
      account_id   = "${var.name_prefix}-training"
      display_name = "Distributed training jobs (soraflow)"
      ksa          = "${var.kfp_namespace}/${var.training_ksa_name}"
    }
  }

  # What each workload may do to each bucket.
  #   pipeline runner: writes run artifacts and checkpoints of single-pod steps,
  #     reads the dataset and adds new dataset versions (create-only: a pipeline
  #     can never delete data history).
  #   training: reads the dataset, writes checkpoints and step outputs.
  bucket_grants = {
    "pipeline_runner/pipeline_root/objectUser" = { sa = "pipeline_runner", bucket = "pipeline_root", role = "roles/storage.objectUser" }
    "pipeline_runner/checkpoints/objectUser"   = { sa = "pipeline_runner", bucket = "checkpoints", role = "roles/storage.objectUser" }
    "pipeline_runner/dvc/objectViewer"         = { sa = "pipeline_runner", bucket = "dvc", role = "roles/storage.objectViewer" }
    "pipeline_runner/dvc/objectCreator"        = { sa = "pipeline_runner", bucket = "dvc", role = "roles/storage.objectCreator" }
    "training/dvc/objectViewer"                = { sa = "training", bucket = "dvc", role = "roles/storage.objectViewer" }
    "training/checkpoints/objectUser"          = { sa = "training", bucket = "checkpoints", role = "roles/storage.objectUser" }
    "training/pipeline_root/objectUser"        = { sa = "training", bucket = "pipeline_root", role = "roles/storage.objectUser" }
  }
}

resource "google_service_account" "workload" {
  for_each     = local.workloads
  project      = var.project_id
  account_id   = each.value.account_id
  display_name = each.value.display_name
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each           = local.workloads
  service_account_id = google_service_account.workload[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.workload_pool}[${each.value.ksa}]"
}

resource "google_storage_bucket_iam_member" "workload" {
  for_each = local.bucket_grants
  bucket   = var.bucket_names[each.value.bucket]
  role     = each.value.role
  member   = "serviceAccount:${google_service_account.workload[each.value.sa].email}"
}

# ---- CI: GitHub Actions through Workload Identity Federation (no JSON keys) ----

resource "google_service_account" "ci" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-ci"
  display_name = "GitHub Actions CI (soraflow)"
}

resource "google_iam_workload_identity_pool" "github" {
  project                   = var.project_id
  workload_identity_pool_id = "${var.name_prefix}-github"
  display_name              = "GitHub Actions"
}

resource "google_iam_workload_identity_pool_provider" "github" {
  # checkov:skip=CKV_GCP_125:The condition pins the sub claim to repo:<owner/name>:ref:refs/heads/<branch>, but both come from variables that checkov cannot resolve statically; tests/infra asserts the condition.
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.github.workload_identity_pool_id
  workload_identity_pool_provider_id = "github"
  display_name                       = "GitHub OIDC"

  attribute_mapping = {
    "google.subject"       = "assertion.sub"
    "attribute.repository" = "assertion.repository"
    "attribute.ref"        = "assertion.ref"
  }
  # Only this repository's workflows running on the protected branch can get a
  # token (the sub claim of a push, schedule or dispatch run on that branch):
  # pull requests, forks and other branches cannot push images or start runs.
  attribute_condition = "assertion.sub == 'repo:${var.github_repository}:ref:refs/heads/${var.github_branch}' && assertion.repository == '${var.github_repository}'"

  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_service_account_iam_member" "ci_federation" {
  service_account_id = google_service_account.ci.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.github.name}/attribute.repository/${var.github_repository}"
}

# Reach the control plane's DNS endpoint and read the cluster object; what CI may
# do inside the cluster is limited by Kubernetes RBAC (cluster_addons: port-forward
# to the KFP API in one namespace).
resource "google_project_iam_member" "ci_cluster_viewer" {
  project = var.project_id
  role    = "roles/container.clusterViewer"
  member  = "serviceAccount:${google_service_account.ci.email}"
}
