variable "project_id" {
  description = "GCP project of the repository."
  type        = string
}

variable "location" {
  description = "Repository region (the cluster's, so pulls stay in-region)."
  type        = string
}

variable "repository_id" {
  description = "Repository id."
  type        = string
}

variable "keep_recent_versions" {
  description = "Image versions per package that cleanup never deletes."
  type        = number
}

variable "reader_members" {
  description = "IAM members that pull images (the nodes' service account)."
  type        = list(string)
}

variable "writer_members" {
  description = "IAM members that push images (the CI service account)."
  type        = list(string)
}

variable "labels" {
  description = "Labels of the repository."
  type        = map(string)
}
