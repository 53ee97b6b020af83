variable "kfp_namespace" {
  description = "Namespace of KFP, its pipeline runs and the training jobs."
  type        = string
}

variable "kfp_version" {
  description = "Kubeflow Pipelines release (git tag of kubeflow/pipelines) that Argo CD installs."
  type        = string
}

variable "enable_cert_manager" {
  description = "Install cert-manager (needed by KFP's Kubernetes-native pipeline store webhooks)."
  type        = bool
}

variable "cert_manager_version" {
  description = "cert-manager chart version."
  type        = string
}

variable "enable_volcano" {
  description = "Install Volcano for gang-scheduled multi-node training jobs."
  type        = bool
}

variable "volcano_version" {
  description = "Volcano chart version."
  type        = string
}

variable "volcano_gpu_quota" {
  description = "GPUs the soraflow-training Volcano queue may hold at once."
  type        = number
}

variable "enable_kube_prometheus_stack" {
  description = "Install kube-prometheus-stack."
  type        = bool
}

variable "kube_prometheus_stack_version" {
  description = "kube-prometheus-stack chart version."
  type        = string
}

variable "prometheus_retention" {
  description = "Prometheus TSDB retention, e.g. 15d."
  type        = string
}

variable "prometheus_storage_size" {
  description = "Prometheus volume size, e.g. 100Gi."
  type        = string
}

variable "enable_dcgm_exporter" {
  description = "Install the NVIDIA DCGM exporter on GPU nodes."
  type        = bool
}

variable "dcgm_exporter_version" {
  description = "dcgm-exporter chart version."
  type        = string
}

variable "pushgateway_version" {
  description = "prometheus-pushgateway chart version (installed with kube-prometheus-stack)."
  type        = string
}

variable "enable_argocd" {
  description = "Install Argo CD and the soraflow Applications (KFP, cluster objects, monitoring, pipelines)."
  type        = bool
}

variable "argocd_version" {
  description = "argo-cd chart version."
  type        = string
}

variable "argocd_apps_version" {
  description = "argocd-apps chart version."
  type        = string
}

variable "gitops_repo_url" {
  description = "HTTPS URL of this repository, which Argo CD syncs."
  type        = string
}

variable "gitops_revision" {
  description = "Branch or tag of this repository for cluster and monitoring manifests."
  type        = string
}

variable "pipelines_manifests_revision" {
  description = "Branch that CI publishes rendered Pipeline/PipelineVersion manifests to."
  type        = string
}

variable "enable_pipeline_manifests_app" {
  description = "Let Argo CD sync KFP Pipeline/PipelineVersion manifests from pipelines_manifests_revision."
  type        = bool
}

variable "pipeline_root" {
  description = "gs:// URL that KFP uses as the default pipeline root."
  type        = string
}

variable "pipeline_runner_gsa" {
  description = "GSA email annotated on the pipeline-runner KSA."
  type        = string
}

variable "training_gsa" {
  description = "GSA email annotated on the training KSA."
  type        = string
}

variable "ci_gsa" {
  description = "GSA email that CI authenticates as (bound to the KFP port-forward Role)."
  type        = string
}

variable "training_ksa_name" {
  description = "Kubernetes service account of training jobs."
  type        = string
}
