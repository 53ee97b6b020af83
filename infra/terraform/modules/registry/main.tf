# Docker repository for the CPU and GPU images. Tags are commit SHAs and never
# move (immutable tags); pipelines reference images by digest anyway.
resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:Images hold code, not data; Google-managed encryption is enough and CMEK would add a KMS key ring whose loss makes every image unreadable. Set kms_key_name here if policy requires it.
  project                = var.project_id
  location               = var.location
  repository_id          = var.repository_id
  description            = "soraflow pipeline images (tagged by git commit)"
  format                 = "DOCKER"
  labels                 = var.labels
  cleanup_policy_dry_run = false

  docker_config {
    immutable_tags = true
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_recent_versions
    }
  }

  # Untagged manifests are left-overs of multi-arch pushes and rebuilds.
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }
}

resource "google_artifact_registry_repository_iam_member" "readers" {
  for_each   = toset(var.reader_members)
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = each.value
}

resource "google_artifact_registry_repository_iam_member" "writers" {
  for_each   = toset(var.writer_members)
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}
