# One GPU node pool: whole 8-GPU machines, scaled from zero by the cluster
# autoscaler when a pod asks for nvidia.com/gpu, and back to zero when idle.

locals {
  pool_labels = merge(var.labels, {
    "soraflow.io/pool"        = var.name
    "soraflow.io/accelerator" = var.accelerator_type
  })
}

resource "google_container_node_pool" "this" {
  provider = google-beta

  project  = var.project_id
  name     = var.name
  cluster  = var.cluster_id
  location = var.region
  # One zone: compact placement needs it, and a multi-node NCCL job must not
  # straddle zones.
  node_locations = [var.zone]

  initial_node_count = 0
  autoscaling {
    total_min_node_count = var.min_nodes
    total_max_node_count = var.max_nodes
    # ANY lets the autoscaler take whatever capacity exists, which matters for Spot.
    location_policy = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # Surge nodes would need spare 8-GPU machines that usually do not exist;
  # replace one node at a time instead.
  upgrade_settings {
    strategy        = "SURGE"
    max_surge       = 0
    max_unavailable = 1
  }

  dynamic "placement_policy" {
    for_each = var.compact_placement ? [1] : []
    content {
      type = "COMPACT"
    }
  }

  node_config {
    machine_type    = var.machine_type
    spot            = var.spot
    disk_type       = "pd-balanced"
    disk_size_gb    = var.disk_size_gb
    image_type      = "COS_CONTAINERD"
    service_account = var.node_service_account
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.pool_labels

    guest_accelerator {
      type  = var.accelerator_type
      count = var.accelerator_count
      # GKE installs the NVIDIA driver itself (no driver DaemonSet to apply);
      # it lives under /home/kubernetes/bin/nvidia on the host.
      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    # Stated explicitly, although GKE adds it too: pods without a toleration for
    # nvidia.com/gpu must never land on (and keep awake) a GPU node.
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    # The A3 machines come with local NVMe SSDs; use them for emptyDir and the
    # image cache (dataset shards, compile caches).
    dynamic "ephemeral_storage_local_ssd_config" {
      for_each = var.local_ssd_count > 0 ? [1] : []
      content {
        local_ssd_count = var.local_ssd_count
      }
    }

    gvnic {
      enabled = true # required by A3 machine types
    }

    gcfs_config {
      enabled = true # image streaming for the multi-GB training image
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    dynamic "reservation_affinity" {
      for_each = var.reservation_name == "" ? [] : [1]
      content {
        consume_reservation_type = "SPECIFIC_RESERVATION"
        key                      = "compute.googleapis.com/reservation-name"
        values                   = [var.reservation_name]
      }
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}
