# ---- project and network --------------------------------------------------

variable "project_id" {
  description = "GCP project to create everything in."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the control plane, buckets, registry and network; it must have a zone offering the GPU machine types."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like us-central1 or europe-west4."
  }
}

variable "cluster_name" {
  description = "Cluster name; also the prefix of the VPC, service accounts and (by default) buckets. At most 19 characters so that service account ids fit in 30."
  type        = string
  default     = "soraflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,17}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 4-19 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "cpu_zones" {
  description = "Zones of the CPU pool (one is cheapest when idle; two or more survive a zonal outage)."
  type        = list(string)

  validation {
    condition     = length(var.cpu_zones) >= 1 && alltrue([for z in var.cpu_zones : can(regex("^[a-z]+-[a-z]+[0-9]-[a-z]$", z))])
    error_message = "cpu_zones must list at least one zone such as us-central1-a."
  }
}

variable "subnet_cidr" {
  description = "Primary range of the node subnet."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0))
    error_message = "subnet_cidr must be a CIDR block."
  }
}

variable "pods_cidr" {
  description = "Secondary range for pods (a /16 gives 256 nodes at 110 pods each)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be a CIDR block."
  }
}

variable "services_cidr" {
  description = "Secondary range for services."
  type        = string
  default     = "10.30.0.0/20"

  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be a CIDR block."
  }
}

variable "master_ipv4_cidr_block" {
  description = "The /28 block for the control plane's private endpoint; must not overlap the ranges above."
  type        = string
  default     = "172.16.0.0/28"

  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be a /28 CIDR block."
  }
}

variable "master_authorized_networks" {
  description = "Extra CIDR blocks allowed on the control plane's IP endpoint. Empty is fine: operators and CI use the DNS endpoint, which IAM guards."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0)) && n.cidr_block != "0.0.0.0/0"])
    error_message = "Every master_authorized_networks entry must be a CIDR block other than 0.0.0.0/0."
  }
}

# ---- cluster --------------------------------------------------------------

variable "release_channel" {
  description = "GKE release channel."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the cluster (set false only for throw-away clusters)."
  type        = bool
  default     = true
}

variable "binary_authorization" {
  description = "Enforce the project's Binary Authorization policy (needs attestations for the CI-built images)."
  type        = bool
  default     = false
}

variable "rbac_security_group" {
  description = "Google Group gke-security-groups@<your domain> whose member groups can be used in Kubernetes RBAC; empty to bind users and service accounts directly."
  type        = string
  default     = ""

  validation {
    condition     = var.rbac_security_group == "" || startswith(var.rbac_security_group, "gke-security-groups@")
    error_message = "rbac_security_group must be gke-security-groups@<domain> or empty."
  }
}

variable "cpu_pool" {
  description = "CPU pool for KFP, Argo CD, monitoring and the CPU pipeline steps (ingest, filter)."
  type = object({
    machine_type = string
    min_nodes    = number
    max_nodes    = number
    disk_size_gb = optional(number, 200)
    spot         = optional(bool, false)
  })
  default = {
    machine_type = "n2-standard-8"
    min_nodes    = 1
    max_nodes    = 8
  }

  validation {
    condition     = var.cpu_pool.min_nodes >= 1 && var.cpu_pool.max_nodes >= var.cpu_pool.min_nodes
    error_message = "cpu_pool needs min_nodes >= 1 (KFP and Argo CD live there) and max_nodes >= min_nodes."
  }
}

variable "gpu_pools" {
  description = <<-EOT
    GPU node pools keyed by pool name (the value of the soraflow.io/pool label that pipeline steps select; soraflow compile --gpu-pool, default gpu-h100).
    Each pool is one zone of whole 8-GPU machines that autoscales from min_nodes (keep 0) to max_nodes.
    a3-highgpu-8g = 8 x H100 80GB (nvidia-h100-80gb), a3-ultragpu-8g = 8 x H200 141GB (nvidia-h200-141gb).
  EOT
  type = map(object({
    zone               = string
    machine_type       = string
    accelerator_type   = string
    accelerator_count  = optional(number, 8)
    gpu_driver_version = optional(string, "LATEST")
    min_nodes          = optional(number, 0)
    max_nodes          = number
    spot               = optional(bool, false)
    compact_placement  = optional(bool, true)
    local_ssd_count    = optional(number, 16)
    disk_size_gb       = optional(number, 500)
    reservation_name   = optional(string, "")
  }))
  default = {
    gpu-h100 = {
      zone             = "us-central1-a"
      machine_type     = "a3-highgpu-8g"
      accelerator_type = "nvidia-h100-80gb"
      max_nodes        = 2
    }
  }

  validation {
    condition     = alltrue([for p in values(var.gpu_pools) : p.min_nodes >= 0 && p.max_nodes >= p.min_nodes && p.max_nodes >= 1])
    error_message = "Every GPU pool needs 0 <= min_nodes <= max_nodes and max_nodes >= 1."
  }

  validation {
    condition = alltrue([for p in values(var.gpu_pools) : (
      (p.machine_type == "a3-highgpu-8g" && p.accelerator_type == "nvidia-h100-80gb") ||
      (p.machine_type == "a3-megagpu-8g" && p.accelerator_type == "nvidia-h100-mega-80gb") ||
      (p.machine_type == "a3-ultragpu-8g" && p.accelerator_type == "nvidia-h200-141gb")
    )])
    error_message = "Supported machine/accelerator pairs: a3-highgpu-8g/nvidia-h100-80gb, a3-megagpu-8g/nvidia-h100-mega-80gb, a3-ultragpu-8g/nvidia-h200-141gb."
  }

  validation {
    condition     = alltrue([for p in values(var.gpu_pools) : p.accelerator_count == 8])
    error_message = "A3 machine types come with exactly 8 GPUs; accelerator_count must be 8."
  }

  validation {
    # GKE offers compact placement with A100, L4 and H100 only.
    condition     = alltrue([for p in values(var.gpu_pools) : !p.compact_placement || startswith(p.accelerator_type, "nvidia-h100")])
    error_message = "compact_placement is only available for H100 pools; set it false for H200 pools."
  }

  validation {
    condition     = alltrue([for p in values(var.gpu_pools) : contains(["DEFAULT", "LATEST"], p.gpu_driver_version)])
    error_message = "gpu_driver_version must be DEFAULT or LATEST (GKE installs the driver)."
  }

  validation {
    condition     = alltrue([for k in keys(var.gpu_pools) : can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", k)) && k != "cpu"])
    error_message = "GPU pool names must be lowercase RFC 1035 labels and must not be \"cpu\"."
  }
}

# ---- storage and registry -------------------------------------------------

variable "bucket_name_prefix" {
  description = "Prefix of the three bucket names (globally unique); empty means <project_id>-<cluster_name>."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_name_prefix == "" || can(regex("^[a-z0-9][a-z0-9-]{2,40}$", var.bucket_name_prefix))
    error_message = "bucket_name_prefix must be 3-41 lowercase letters, digits or hyphens."
  }
}

variable "pipeline_root_retention_days" {
  description = "Days before KFP run artifacts in the pipeline-root bucket are deleted (models worth keeping go to the checkpoints bucket)."
  type        = number
  default     = 30

  validation {
    condition     = var.pipeline_root_retention_days >= 1
    error_message = "pipeline_root_retention_days must be >= 1."
  }
}

variable "checkpoint_nearline_after_days" {
  description = "Days before checkpoints move to Nearline (cheaper storage, retrieval fee)."
  type        = number
  default     = 30

  validation {
    condition     = var.checkpoint_nearline_after_days >= 1
    error_message = "checkpoint_nearline_after_days must be >= 1."
  }
}

variable "noncurrent_retention_days" {
  description = "Days that overwritten or deleted object versions stay recoverable."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_retention_days >= 1
    error_message = "noncurrent_retention_days must be >= 1."
  }
}

variable "access_log_bucket" {
  description = "Existing bucket that receives usage logs of the three buckets; empty for none."
  type        = string
  default     = ""
}

variable "artifact_registry_repository" {
  description = "Artifact Registry Docker repository id for the soraflow images."
  type        = string
  default     = "soraflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,62}$", var.artifact_registry_repository))
    error_message = "artifact_registry_repository must be lowercase letters, digits and hyphens."
  }
}

variable "image_keep_recent_versions" {
  description = "Most recent image versions that registry cleanup always keeps."
  type        = number
  default     = 50

  validation {
    condition     = var.image_keep_recent_versions >= 5
    error_message = "Keep at least 5 versions so a rollback target always exists."
  }
}

# ---- CI / GitOps ----------------------------------------------------------

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows on github_branch may push images and start runs."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name."
  }
}

variable "github_branch" {
  description = "The protected branch whose workflow runs may act as the CI service account."
  type        = string
  default     = "main"
}

variable "gitops_repo_url" {
  description = "HTTPS clone URL of this repository for Argo CD."
  type        = string

  validation {
    condition     = startswith(var.gitops_repo_url, "https://")
    error_message = "gitops_repo_url must be an https:// URL."
  }
}

variable "gitops_revision" {
  description = "Branch or tag Argo CD syncs infra/gitops/cluster and monitoring/ from (alert runbook links point at it too)."
  type        = string
  default     = "main"
}

variable "pipelines_manifests_branch" {
  description = "Branch the retrain workflow publishes rendered KFP Pipeline/PipelineVersion manifests to."
  type        = string
  default     = "kfp-manifests"
}

variable "enable_pipeline_manifests_app" {
  description = "Have Argo CD sync the KFP Pipeline/PipelineVersion manifests (declarative pipeline registry)."
  type        = bool
  default     = true
}

# ---- add-ons (pinned versions) --------------------------------------------

variable "kfp_version" {
  description = "Kubeflow Pipelines release installed standalone (a kubeflow/pipelines git tag); keep it on the SDK's minor (kfp 2.17)."
  type        = string
  default     = "2.17.1"

  validation {
    condition     = can(regex("^2\\.[0-9]+\\.[0-9]+$", var.kfp_version))
    error_message = "kfp_version must be an exact 2.x.y release, never a branch."
  }
}

variable "cert_manager_version" {
  description = "cert-manager Helm chart version."
  type        = string
  default     = "v1.17.2"
}

variable "enable_volcano" {
  description = "Install Volcano (gang scheduling for multi-node torchx training jobs)."
  type        = bool
  default     = true
}

variable "volcano_version" {
  description = "Volcano Helm chart version."
  type        = string
  default     = "1.12.1"
}

variable "volcano_gpu_quota" {
  description = "GPUs the soraflow-training Volcano queue may hold at once; normally the sum of the GPU pools' max_nodes x 8."
  type        = number
  default     = 16

  validation {
    condition     = var.volcano_gpu_quota >= 8
    error_message = "volcano_gpu_quota must allow at least one 8-GPU node."
  }
}

variable "enable_kube_prometheus_stack" {
  description = "Install kube-prometheus-stack (Prometheus, Alertmanager, Grafana)."
  type        = bool
  default     = true
}

variable "kube_prometheus_stack_version" {
  description = "kube-prometheus-stack Helm chart version."
  type        = string
  default     = "82.16.0"
}

variable "prometheus_retention" {
  description = "Prometheus retention period."
  type        = string
  default     = "15d"

  validation {
    condition     = can(regex("^[0-9]+(h|d|w)$", var.prometheus_retention))
    error_message = "prometheus_retention must look like 15d, 2w or 72h."
  }
}

variable "prometheus_storage_size" {
  description = "Size of the Prometheus volume."
  type        = string
  default     = "100Gi"

  validation {
    condition     = can(regex("^[0-9]+Gi$", var.prometheus_storage_size))
    error_message = "prometheus_storage_size must be in Gi, e.g. 100Gi."
  }
}

variable "enable_dcgm_exporter" {
  description = "Install the NVIDIA DCGM exporter on GPU nodes (needs kube-prometheus-stack)."
  type        = bool
  default     = true
}

variable "dcgm_exporter_version" {
  description = "dcgm-exporter Helm chart version."
  type        = string
  default     = "4.1.1"
}

variable "pushgateway_version" {
  description = "prometheus-pushgateway Helm chart version: where ingest, filter and eval push their completion metrics."
  type        = string
  default     = "3.0.0"
}

variable "argocd_version" {
  description = "argo-cd Helm chart version."
  type        = string
  default     = "8.0.17"
}

variable "argocd_apps_version" {
  description = "argocd-apps Helm chart version."
  type        = string
  default     = "2.0.2"
}

variable "labels" {
  description = "Labels added to every labelled resource (cost attribution)."
  type        = map(string)
  default     = {}
}
