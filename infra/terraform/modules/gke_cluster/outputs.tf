output "name" {
  description = "Cluster name."
  value       = google_container_cluster.this.name
}

output "id" {
  description = "Cluster id (projects/P/locations/L/clusters/N)."
  value       = google_container_cluster.this.id
}

output "location" {
  description = "Cluster location (region)."
  value       = google_container_cluster.this.location
}

output "endpoint" {
  description = "Control plane IP endpoint."
  value       = google_container_cluster.this.endpoint
  sensitive   = true
}

output "dns_endpoint" {
  description = "Control plane DNS endpoint (IAM-authenticated)."
  value       = google_container_cluster.this.control_plane_endpoints_config[0].dns_endpoint_config[0].endpoint
}

output "ca_certificate" {
  description = "Cluster CA certificate (base64)."
  value       = google_container_cluster.this.master_auth[0].cluster_ca_certificate
  sensitive   = true
}

output "workload_pool" {
  description = "Workload Identity pool of the cluster."
  value       = local.workload_pool
}

output "node_service_account" {
  description = "Email of the nodes' service account."
  value       = google_service_account.nodes.email
}
