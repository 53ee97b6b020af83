output "pipeline_runner_email" {
  description = "GSA of the KFP pipeline-runner KSA."
  value       = google_service_account.workload["pipeline_runner"].email
}

output "training_email" {
  description = "GSA of the training jobs' KSA."
  value       = google_service_account.workload["training"].email
}

output "ci_email" {
  description = "GSA that GitHub Actions impersonates."
  value       = google_service_account.ci.email
}

output "github_workload_identity_provider" {
  description = "Full resource name of the GitHub OIDC provider (for google-github-actions/auth)."
  value       = google_iam_workload_identity_pool_provider.github.name
}
