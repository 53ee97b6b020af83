# Private, VPC-native GKE Standard cluster. Nodes have no public IPs; the control
# plane is reached through its DNS endpoint (IAM-authenticated, so CI needs no
# allow-listed IPs or bastion) and optionally through authorized networks.

locals {
  workload_pool = "${var.project_id}.svc.id.goog"
}

# Nodes run as a dedicated service account with only the roles GKE needs to log,
# report metrics and pull images: never the Compute Engine default account, which
# holds roles/editor on the project.
resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = "${var.name}-nodes"
  display_name = "GKE nodes of ${var.name}"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/autoscaling.metricsWriter",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "this" {
  # checkov:skip=CKV_GCP_12:NetworkPolicy is enforced by Dataplane V2 (datapath_provider ADVANCED_DATAPATH); the legacy Calico network_policy add-on cannot be combined with it.
  # checkov:skip=CKV_GCP_66:Binary Authorization is behind var.binary_authorization; enforcing it needs an attestation step for the CI-built images, which a new project does not have yet.
  # checkov:skip=CKV_GCP_69:The default node pool is removed; every node pool (cpu here, GPU pools in gpu_node_pool) sets workload_metadata_config GKE_METADATA, asserted by tests/infra.
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Workspace domain with a gke-security-groups group; set var.rbac_security_group to enable it.
  provider = google-beta

  project        = var.project_id
  name           = var.name
  location       = var.region
  node_locations = var.zones

  # Node pools are managed as separate resources so that GPU pools can change
  # without recreating the cluster.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = var.deletion_protection

  network         = var.network_id
  subnetwork      = var.subnet_id
  networking_mode = "VPC_NATIVE"
  ip_allocation_policy {
    cluster_secondary_range_name  = var.pods_range_name
    services_secondary_range_name = var.services_range_name
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block
    master_global_access_config {
      enabled = true
    }
  }

  control_plane_endpoints_config {
    dns_endpoint_config {
      allow_external_traffic = true
    }
  }

  # An empty list still enables the block: the IP endpoint then answers only
  # from inside the VPC.
  master_authorized_networks_config {
    gcp_public_cidrs_access_enabled = false
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  dynamic "authenticator_groups_config" {
    for_each = var.rbac_security_group == "" ? [] : [1]
    content {
      security_group = var.rbac_security_group
    }
  }

  release_channel {
    channel = var.release_channel
  }

  workload_identity_config {
    workload_pool = local.workload_pool
  }

  # Dataplane V2 enforces NetworkPolicy without the Calico add-on.
  datapath_provider           = "ADVANCED_DATAPATH"
  enable_intranode_visibility = true
  enable_shielded_nodes       = true
  enable_legacy_abac          = false

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
    # ReadWriteMany volumes (the soraflow-data PVC that every pipeline step mounts).
    gcp_filestore_csi_driver_config {
      enabled = true
    }
    # Lets training pods mount the checkpoint and data buckets as files.
    gcs_fuse_csi_driver_config {
      enabled = true
    }
  }

  # The cluster autoscaler removes idle GPU nodes sooner under this profile,
  # which is what keeps an idle cluster's GPU pools at zero.
  cluster_autoscaling {
    autoscaling_profile = "OPTIMIZE_UTILIZATION"
  }

  binary_authorization {
    evaluation_mode = var.binary_authorization ? "PROJECT_SINGLETON_POLICY_ENFORCE" : "DISABLED"
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  # Metrics go to the in-cluster kube-prometheus-stack; Managed Prometheus off
  # so samples are not billed twice.
  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = false
    }
  }

  maintenance_policy {
    recurring_window {
      start_time = "2024-01-06T02:00:00Z"
      end_time   = "2024-01-06T08:00:00Z"
      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"
    }
  }

  resource_labels = var.labels
}

resource "google_container_node_pool" "cpu" {
  project        = var.project_id
  name           = "cpu"
  cluster        = google_container_cluster.this.id
  location       = var.region
  node_locations = var.zones

  initial_node_count = var.cpu_pool.min_nodes
  autoscaling {
    min_node_count  = var.cpu_pool.min_nodes
    max_node_count  = var.cpu_pool.max_nodes
    location_policy = "BALANCED"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.cpu_pool.machine_type
    disk_type       = "pd-balanced"
    disk_size_gb    = var.cpu_pool.disk_size_gb
    image_type      = "COS_CONTAINERD"
    spot            = var.cpu_pool.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    labels = merge(var.labels, {
      "soraflow.io/pool" = "cpu"
    })

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    gcfs_config {
      enabled = true # image streaming: the multi-GB CPU image starts in seconds
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}
