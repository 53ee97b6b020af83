variable "project_id" {
  description = "GCP project of the buckets."
  type        = string
}

variable "name_prefix" {
  description = "Bucket names are <name_prefix>-dvc, -pipeline-root and -checkpoints (globally unique)."
  type        = string
}

variable "location" {
  description = "Bucket location; the cluster's region keeps reads local and egress-free."
  type        = string
}

variable "pipeline_root_retention_days" {
  description = "Days before KFP run artifacts are deleted."
  type        = number
}

variable "checkpoint_nearline_after_days" {
  description = "Days before checkpoints move to Nearline storage."
  type        = number
}

variable "noncurrent_retention_days" {
  description = "Days that overwritten or deleted object versions are kept."
  type        = number
}

variable "access_log_bucket" {
  description = "Bucket that receives usage logs, or empty for none."
  type        = string
}

variable "labels" {
  description = "Labels put on every bucket."
  type        = map(string)
}
