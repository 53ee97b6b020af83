locals {
  # KFP's kustomize overlays hard-code this namespace, and so do the manifests
  # in infra/gitops/cluster; it is not a variable on purpose.
  kfp_namespace     = "kubeflow"
  training_ksa_name = "soraflow-training"
  name_prefix       = var.cluster_name
  labels = merge(var.labels, {
    "app"        = "soraflow"
    "managed-by" = "terraform"
  })
}

resource "google_project_service" "apis" {
  for_each = toset([
    "container.googleapis.com",
    "compute.googleapis.com",
    "artifactregistry.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "sts.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "network" {
  source = "./modules/network"

  project_id    = var.project_id
  region        = var.region
  name          = "${var.cluster_name}-vpc"
  subnet_cidr   = var.subnet_cidr
  pods_cidr     = var.pods_cidr
  services_cidr = var.services_cidr

  depends_on = [google_project_service.apis]
}

module "gke" {
  source = "./modules/gke_cluster"

  project_id                 = var.project_id
  name                       = var.cluster_name
  region                     = var.region
  zones                      = var.cpu_zones
  network_id                 = module.network.network_id
  subnet_id                  = module.network.subnet_id
  pods_range_name            = module.network.pods_range_name
  services_range_name        = module.network.services_range_name
  master_ipv4_cidr_block     = var.master_ipv4_cidr_block
  master_authorized_networks = var.master_authorized_networks
  release_channel            = var.release_channel
  deletion_protection        = var.deletion_protection
  binary_authorization       = var.binary_authorization
  cpu_pool                   = var.cpu_pool
  rbac_security_group        = var.rbac_security_group
  labels                     = local.labels
}

module "gpu_pools" {
  source   = "./modules/gpu_node_pool"
  for_each = var.gpu_pools

  project_id           = var.project_id
  cluster_id           = module.gke.id
  region               = var.region
  zone                 = each.value.zone
  name                 = each.key
  machine_type         = each.value.machine_type
  accelerator_type     = each.value.accelerator_type
  accelerator_count    = each.value.accelerator_count
  gpu_driver_version   = each.value.gpu_driver_version
  min_nodes            = each.value.min_nodes
  max_nodes            = each.value.max_nodes
  spot                 = each.value.spot
  compact_placement    = each.value.compact_placement
  local_ssd_count      = each.value.local_ssd_count
  disk_size_gb         = each.value.disk_size_gb
  reservation_name     = each.value.reservation_name
  node_service_account = module.gke.node_service_account
  labels               = local.labels
}

module "storage" {
  source = "./modules/storage"

  project_id                     = var.project_id
  name_prefix                    = coalesce(var.bucket_name_prefix, "${var.project_id}-${var.cluster_name}")
  location                       = var.region
  pipeline_root_retention_days   = var.pipeline_root_retention_days
  checkpoint_nearline_after_days = var.checkpoint_nearline_after_days
  noncurrent_retention_days      = var.noncurrent_retention_days
  access_log_bucket              = var.access_log_bucket
  labels                         = local.labels

  depends_on = [google_project_service.apis]
}

module "identity" {
  source = "./modules/identity"

  project_id        = var.project_id
  name_prefix       = local.name_prefix
  workload_pool     = module.gke.workload_pool
  kfp_namespace     = local.kfp_namespace
  training_ksa_name = local.training_ksa_name
  bucket_names      = module.storage.names
  github_repository = var.github_repository
  github_branch     = var.github_branch
}

module "registry" {
  source = "./modules/registry"

  project_id           = var.project_id
  location             = var.region
  repository_id        = var.artifact_registry_repository
  keep_recent_versions = var.image_keep_recent_versions
  reader_members       = ["serviceAccount:${module.gke.node_service_account}"]
  writer_members       = ["serviceAccount:${module.identity.ci_email}"]
  labels               = local.labels

  depends_on = [google_project_service.apis]
}

module "addons" {
  source = "./modules/cluster_addons"

  kfp_namespace                 = local.kfp_namespace
  kfp_version                   = var.kfp_version
  enable_cert_manager           = true # KFP's Kubernetes-native store needs it
  cert_manager_version          = var.cert_manager_version
  enable_volcano                = var.enable_volcano
  volcano_version               = var.volcano_version
  volcano_gpu_quota             = var.volcano_gpu_quota
  enable_kube_prometheus_stack  = var.enable_kube_prometheus_stack
  kube_prometheus_stack_version = var.kube_prometheus_stack_version
  prometheus_retention          = var.prometheus_retention
  prometheus_storage_size       = var.prometheus_storage_size
  enable_dcgm_exporter          = var.enable_dcgm_exporter && var.enable_kube_prometheus_stack
  dcgm_exporter_version         = var.dcgm_exporter_version
  pushgateway_version           = var.pushgateway_version
  enable_argocd                 = true # installs KFP itself
  argocd_version                = var.argocd_version
  argocd_apps_version           = var.argocd_apps_version
  gitops_repo_url               = var.gitops_repo_url
  gitops_revision               = var.gitops_revision
  pipelines_manifests_revision  = var.pipelines_manifests_branch
  enable_pipeline_manifests_app = var.enable_pipeline_manifests_app
  pipeline_root                 = module.storage.urls["pipeline_root"]
  pipeline_runner_gsa           = module.identity.pipeline_runner_email
  training_gsa                  = module.identity.training_email
  ci_gsa                        = module.identity.ci_email
  training_ksa_name             = local.training_ksa_name

  # Add-ons run on the CPU pool.
  depends_on = [module.gke]
}
