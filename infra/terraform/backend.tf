# State lives in a GCS bucket created once by hand (it cannot hold its own
# state): terraform init -backend-config="bucket=<state bucket>" -backend-config="prefix=soraflow/<env>"
terraform {
  backend "gcs" {}
}
