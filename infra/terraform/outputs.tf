output "cluster_name" {
  description = "GKE cluster name (GitHub variable GKE_CLUSTER)."
  value       = module.gke.name
}

output "cluster_location" {
  description = "GKE cluster location (GitHub variable GKE_LOCATION)."
  value       = module.gke.location
}

output "get_credentials_command" {
  description = "kubectl credentials through the IAM-guarded DNS endpoint."
  value       = "gcloud container clusters get-credentials ${module.gke.name} --location ${module.gke.location} --project ${var.project_id} --dns-endpoint"
}

output "kfp_port_forward_command" {
  description = "Makes the KFP API reachable on localhost:8888 for soraflow submit --host http://localhost:8888."
  value       = "kubectl -n ${local.kfp_namespace} port-forward svc/ml-pipeline 8888:8888"
}

output "kfp_ui_port_forward_command" {
  description = "Makes the KFP UI reachable on http://localhost:8080."
  value       = "kubectl -n ${local.kfp_namespace} port-forward svc/ml-pipeline-ui 8080:80"
}

output "kfp_namespace" {
  description = "Namespace of KFP and the training jobs."
  value       = local.kfp_namespace
}

output "pipeline_root" {
  description = "Default KFP pipeline root (gs:// URL)."
  value       = module.storage.urls["pipeline_root"]
}

output "dvc_remote_url" {
  description = "DVC remote: dvc remote add -d gcs <this> (needs the dvc-gs plugin)."
  value       = module.storage.urls["dvc"]
}

output "checkpoints_bucket_url" {
  description = "Bucket for training checkpoints and exported weights."
  value       = module.storage.urls["checkpoints"]
}

output "bucket_names" {
  description = "Bucket names keyed by role."
  value       = module.storage.names
}

output "artifact_registry_url" {
  description = "Image prefix; images are <this>/soraflow-cpu and <this>/soraflow-gpu (GitHub variable AR_REPOSITORY_URL)."
  value       = module.registry.url
}

output "gpu_node_selectors" {
  description = "Node selector for each GPU pool, keyed by pool name."
  value       = { for k, m in module.gpu_pools : k => m.node_selector }
}

output "service_accounts" {
  description = "Google service accounts per workload."
  value = {
    pipeline_runner = module.identity.pipeline_runner_email
    training        = module.identity.training_email
    ci              = module.identity.ci_email
    nodes           = module.gke.node_service_account
  }
}

output "github_actions_variables" {
  description = "Repository variables the workflows in .github/workflows read (Settings > Secrets and variables > Actions > Variables)."
  value = {
    GCP_PROJECT_ID      = var.project_id
    GKE_CLUSTER         = module.gke.name
    GKE_LOCATION        = module.gke.location
    AR_REPOSITORY_URL   = module.registry.url
    WIF_PROVIDER        = module.identity.github_workload_identity_provider
    CI_SERVICE_ACCOUNT  = module.identity.ci_email
    KFP_NAMESPACE       = local.kfp_namespace
    PIPELINE_ROOT       = module.storage.urls["pipeline_root"]
    KFP_MANIFEST_BRANCH = var.pipelines_manifests_branch
  }
}
