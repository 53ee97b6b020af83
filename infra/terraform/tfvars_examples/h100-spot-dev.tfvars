# Smallest useful cluster: one CPU node, one H100 pool on Spot VMs that sits at
# zero nodes until a pipeline step asks for GPUs. Spot preemption costs at most
# one checkpoint interval: training steps resume from the last checkpoint.
project_id        = "my-soraflow-dev"
region            = "us-central1"
cpu_zones         = ["us-central1-a"]
cluster_name      = "soraflow-dev"
github_repository = "my-org/soraflow"
gitops_repo_url   = "https://github.com/my-org/soraflow.git"

deletion_protection = false

cpu_pool = {
  machine_type = "n2-standard-8"
  min_nodes    = 1
  max_nodes    = 4
}

gpu_pools = {
  gpu-h100 = {
    zone              = "us-central1-a"
    machine_type      = "a3-highgpu-8g"
    accelerator_type  = "nvidia-h100-80gb"
    min_nodes         = 0
    max_nodes         = 2
    spot              = true
    compact_placement = true
  }
}

volcano_gpu_quota = 16
