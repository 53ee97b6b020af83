variable "project_id" {
  description = "GCP project of the service accounts."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of service account ids (6-20 characters total per id, so keep it short)."
  type        = string
}

variable "workload_pool" {
  description = "The cluster's Workload Identity pool (PROJECT.svc.id.goog)."
  type        = string
}

variable "kfp_namespace" {
  description = "Namespace of KFP and of the training jobs."
  type        = string
}

variable "training_ksa_name" {
  description = "Kubernetes service account that training jobs run as."
  type        = string
}

variable "bucket_names" {
  description = "Bucket names keyed by role: dvc, pipeline_root, checkpoints."
  type        = map(string)
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows may act as the CI service account."
  type        = string
}

variable "github_branch" {
  description = "Branch whose workflow runs may act as the CI service account."
  type        = string
}
