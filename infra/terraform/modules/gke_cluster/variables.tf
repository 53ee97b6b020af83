variable "project_id" {
  description = "GCP project of the cluster."
  type        = string
}

variable "name" {
  description = "Cluster name."
  type        = string
}

variable "region" {
  description = "Region of the (regional) control plane."
  type        = string
}

variable "zones" {
  description = "Zones where the CPU pool places nodes."
  type        = list(string)
}

variable "network_id" {
  description = "VPC self link."
  type        = string
}

variable "subnet_id" {
  description = "Node subnet self link."
  type        = string
}

variable "pods_range_name" {
  description = "Secondary range name for pods."
  type        = string
}

variable "services_range_name" {
  description = "Secondary range name for services."
  type        = string
}

variable "master_ipv4_cidr_block" {
  description = "The /28 range for the control plane's private endpoint."
  type        = string
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the control plane's IP endpoint."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
}

variable "release_channel" {
  description = "GKE release channel."
  type        = string
}

variable "deletion_protection" {
  description = "Refuse terraform destroy of the cluster."
  type        = bool
}

variable "binary_authorization" {
  description = "Enforce the project's Binary Authorization policy."
  type        = bool
}

variable "cpu_pool" {
  description = "CPU node pool for KFP, Argo, monitoring and curation steps."
  type = object({
    machine_type = string
    min_nodes    = number
    max_nodes    = number
    disk_size_gb = number
    spot         = bool
  })
}

variable "labels" {
  description = "Labels put on the cluster and its nodes."
  type        = map(string)
}

variable "rbac_security_group" {
  description = "gke-security-groups@<domain> for Google Groups in Kubernetes RBAC, or empty."
  type        = string
}
