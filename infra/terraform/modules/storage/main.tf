# Three buckets with different lifetimes:
#   dvc          the DVC remote: content-addressed, kept; old versions are the data history
#   pipeline-root KFP artifacts of every run: bulky and reproducible, expire
#   checkpoints  DCP checkpoints and exported weights: kept, cooled down over time
# All are private (uniform access, public access prevention) and versioned so a
# bad overwrite or delete can be undone.

locals {
  buckets = {
    dvc = {
      name                       = "${var.name_prefix}-dvc"
      delete_after_days          = 0 # never expire current objects: DVC's cache is the dataset
      nearline_after_days        = 0
      noncurrent_retention_days  = var.noncurrent_retention_days
      keep_noncurrent_newer_than = 3
    }
    pipeline_root = {
      name                       = "${var.name_prefix}-pipeline-root"
      delete_after_days          = var.pipeline_root_retention_days
      nearline_after_days        = 0
      noncurrent_retention_days  = 7
      keep_noncurrent_newer_than = 1
    }
    checkpoints = {
      name                       = "${var.name_prefix}-checkpoints"
      delete_after_days          = 0
      nearline_after_days        = var.checkpoint_nearline_after_days
      noncurrent_retention_days  = var.noncurrent_retention_days
      keep_noncurrent_newer_than = 1
    }
  }
}

resource "google_storage_bucket" "this" {
  for_each = local.buckets

  project                     = var.project_id
  name                        = each.value.name
  location                    = var.location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = merge(var.labels, { "soraflow-bucket" = replace(each.key, "_", "-") })

  versioning {
    enabled = true
  }

  # Uploads of multi-GB checkpoint shards that died half-way.
  lifecycle_rule {
    condition {
      age = 3
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  # Noncurrent (overwritten or deleted) versions are kept for a while, then removed.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = each.value.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      num_newer_versions = each.value.keep_noncurrent_newer_than
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.delete_after_days > 0 ? [1] : []
    content {
      condition {
        age        = each.value.delete_after_days
        with_state = "LIVE"
      }
      action {
        type = "Delete"
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.nearline_after_days > 0 ? [1] : []
    content {
      condition {
        age                   = each.value.nearline_after_days
        with_state            = "LIVE"
        matches_storage_class = ["STANDARD"]
      }
      action {
        type          = "SetStorageClass"
        storage_class = "NEARLINE"
      }
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 7 * 24 * 3600
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == "" ? [] : [1]
    content {
      log_bucket = var.access_log_bucket
    }
  }
}
