output "kfp_namespace" {
  description = "Namespace where KFP runs."
  value       = var.kfp_namespace
}

output "grafana_service" {
  description = "Service to port-forward for Grafana (namespace/name), or null when monitoring is off."
  value       = var.enable_kube_prometheus_stack ? "monitoring/kube-prometheus-stack-grafana" : null
}
