# Production stage-1/2 training on reserved H100 capacity: 4 nodes x 8 GPUs in a
# compact placement, regional CPU pool across two zones, deletion protection on.
project_id        = "my-soraflow-prod"
region            = "us-east5"
cpu_zones         = ["us-east5-a", "us-east5-b"]
cluster_name      = "soraflow"
github_repository = "my-org/soraflow"
gitops_repo_url   = "https://github.com/my-org/soraflow.git"

cpu_pool = {
  machine_type = "n2-standard-16"
  min_nodes    = 1
  max_nodes    = 10
}

gpu_pools = {
  gpu-h100 = {
    zone              = "us-east5-a"
    machine_type      = "a3-highgpu-8g"
    accelerator_type  = "nvidia-h100-80gb"
    min_nodes         = 0
    max_nodes         = 4
    spot              = false
    compact_placement = true
    reservation_name  = "soraflow-h100-reservation"
  }
}

volcano_gpu_quota            = 32
pipeline_root_retention_days = 60
prometheus_retention         = "30d"
prometheus_storage_size      = "200Gi"
