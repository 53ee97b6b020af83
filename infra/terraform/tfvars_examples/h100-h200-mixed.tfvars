# H100 pool for stages 1-2 and the VAE, H200 pool for the 768px stage 3, whose
# upstream batch sizes were tuned on 141 GB GPUs (they OOM on 80 GB). Both at zero
# when idle. H200 (a3-ultragpu-8g) is offered in few zones and has no GKE compact
# placement; its zone may differ from the H100 pool's.
project_id        = "my-soraflow-prod"
region            = "us-central1"
cpu_zones         = ["us-central1-a"]
cluster_name      = "soraflow"
github_repository = "my-org/soraflow"
gitops_repo_url   = "https://github.com/my-org/soraflow.git"

cpu_pool = {
  machine_type = "n2-standard-8"
  min_nodes    = 1
  max_nodes    = 8
}

gpu_pools = {
  gpu-h100 = {
    zone              = "us-central1-a"
    machine_type      = "a3-highgpu-8g"
    accelerator_type  = "nvidia-h100-80gb"
    min_nodes         = 0
    max_nodes         = 4
    spot              = true
    compact_placement = true
  }
  gpu-h200 = {
    zone              = "us-central1-b"
    machine_type      = "a3-ultragpu-8g"
    accelerator_type  = "nvidia-h200-141gb"
    min_nodes         = 0
    max_nodes         = 4
    spot              = false
    compact_placement = false
    local_ssd_count   = 32
  }
}

volcano_gpu_quota = 64
