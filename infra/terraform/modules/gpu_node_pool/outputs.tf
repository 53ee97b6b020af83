output "name" {
  description = "Node pool name."
  value       = google_container_node_pool.this.name
}

output "node_selector" {
  description = "Node selector that pins a pod to this pool."
  value       = { "soraflow.io/pool" = google_container_node_pool.this.name }
}
