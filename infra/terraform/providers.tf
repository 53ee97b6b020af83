provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

# Helm talks to the private cluster through its DNS endpoint with the caller's
# Google credentials: no bastion, no authorized network for the operator's IP.
provider "helm" {
  kubernetes {
    host  = "https://${module.gke.dns_endpoint}"
    token = data.google_client_config.current.access_token
  }
}
