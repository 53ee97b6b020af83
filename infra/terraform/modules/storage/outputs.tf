output "names" {
  description = "Bucket names keyed by role (dvc, pipeline_root, checkpoints)."
  value       = { for k, b in google_storage_bucket.this : k => b.name }
}

output "urls" {
  description = "gs:// URLs keyed by role."
  value       = { for k, b in google_storage_bucket.this : k => b.url }
}
