variable "project_id" {
  description = "GCP project of the cluster."
  type        = string
}

variable "cluster_id" {
  description = "Id of the cluster the pool belongs to."
  type        = string
}

variable "region" {
  description = "Cluster location (region)."
  type        = string
}

variable "zone" {
  description = "The single zone of the pool; it must offer the machine type."
  type        = string
}

variable "name" {
  description = "Node pool name; also the value of the soraflow.io/pool label that pipelines select on."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name))
    error_message = "name must be a lowercase RFC 1035 label of at most 40 characters."
  }
}

variable "machine_type" {
  description = "Accelerator-optimised machine type, e.g. a3-highgpu-8g (H100) or a3-ultragpu-8g (H200)."
  type        = string

  validation {
    condition     = can(regex("^a[234]-", var.machine_type))
    error_message = "machine_type must be an accelerator-optimised (A2/A3/A4) machine type."
  }
}

variable "accelerator_type" {
  description = "GPU type attached to each node."
  type        = string

  validation {
    condition     = contains(["nvidia-h100-80gb", "nvidia-h100-mega-80gb", "nvidia-h200-141gb", "nvidia-a100-80gb", "nvidia-b200"], var.accelerator_type)
    error_message = "accelerator_type must be one of nvidia-h100-80gb, nvidia-h100-mega-80gb, nvidia-h200-141gb, nvidia-a100-80gb, nvidia-b200."
  }
}

variable "accelerator_count" {
  description = "GPUs per node; A3 machines come with exactly 8."
  type        = number

  validation {
    condition     = contains([1, 2, 4, 8], var.accelerator_count)
    error_message = "accelerator_count must be 1, 2, 4 or 8."
  }
}

variable "gpu_driver_version" {
  description = "GKE-managed driver: DEFAULT or LATEST for the node version (INSTALLATION_DISABLED only with the GPU Operator)."
  type        = string

  validation {
    condition     = contains(["DEFAULT", "LATEST", "INSTALLATION_DISABLED"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be DEFAULT, LATEST or INSTALLATION_DISABLED."
  }
}

variable "min_nodes" {
  description = "Autoscaling minimum; 0 keeps an idle pool free of GPU charges."
  type        = number

  validation {
    condition     = var.min_nodes >= 0
    error_message = "min_nodes must be >= 0."
  }
}

variable "max_nodes" {
  description = "Autoscaling maximum (nodes, not GPUs); bounded by quota."
  type        = number

  validation {
    condition     = var.max_nodes >= 1
    error_message = "max_nodes must be >= 1."
  }
}

variable "spot" {
  description = "Use Spot VMs (cheaper, can be preempted with 30 s notice; training resumes from the last checkpoint)."
  type        = bool
}

variable "compact_placement" {
  description = "Place the pool's nodes physically close (lower NCCL latency between nodes)."
  type        = bool
}

variable "local_ssd_count" {
  description = "Local NVMe SSDs used for ephemeral storage (a3-highgpu-8g: 16, a3-ultragpu-8g: 32; 0 for none)."
  type        = number

  validation {
    condition     = var.local_ssd_count >= 0
    error_message = "local_ssd_count must be >= 0."
  }
}

variable "disk_size_gb" {
  description = "Boot disk size."
  type        = number
}

variable "reservation_name" {
  description = "Name of a specific Compute Engine reservation to consume, or empty for on-demand/Spot capacity."
  type        = string
}

variable "node_service_account" {
  description = "Service account the nodes run as."
  type        = string
}

variable "labels" {
  description = "Extra node labels."
  type        = map(string)
}
