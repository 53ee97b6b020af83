# In-cluster platform: cert-manager (KFP's webhook certificates), Volcano (gang
# scheduling for torchx multi-node jobs), kube-prometheus-stack and the DCGM
# exporter, and Argo CD, which then syncs KFP at a pinned release and this
# repository's cluster and pipeline manifests.
#
# Helm releases only: every chart version is pinned by a variable. Namespaced
# objects with values known only here (service account emails, bucket URLs) go
# to Argo CD as inline kustomize patches, so the manifests in git stay static
# and schema-checked.

locals {
  system_node_selector = { "soraflow.io/pool" = "cpu" }
  # Alerts link to docs/runbooks.md at the revision Argo CD syncs (a GitHub-style blob URL; see the runbook).
  runbook_base_url = "${trimsuffix(var.gitops_repo_url, ".git")}/blob/${var.gitops_revision}/docs"
}

resource "helm_release" "cert_manager" {
  count            = var.enable_cert_manager ? 1 : 0
  name             = "cert-manager"
  repository       = "https://charts.jetstack.io"
  chart            = "cert-manager"
  version          = var.cert_manager_version
  namespace        = "cert-manager"
  create_namespace = true
  atomic           = true
  values = [yamlencode({
    crds         = { enabled = true }
    nodeSelector = local.system_node_selector
  })]
}

resource "helm_release" "volcano" {
  count            = var.enable_volcano ? 1 : 0
  name             = "volcano"
  repository       = "https://volcano-sh.github.io/helm-charts"
  chart            = "volcano"
  version          = var.volcano_version
  namespace        = "volcano-system"
  create_namespace = true
  atomic           = true
  values           = [file("${path.module}/values/volcano.yaml")]
}

resource "helm_release" "kube_prometheus_stack" {
  count            = var.enable_kube_prometheus_stack ? 1 : 0
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_version
  namespace        = "monitoring"
  create_namespace = true
  atomic           = true
  timeout          = 900
  values = [templatefile("${path.module}/values/kube-prometheus-stack.yaml.tftpl", {
    retention    = var.prometheus_retention
    storage_size = var.prometheus_storage_size
  })]
}

resource "helm_release" "dcgm_exporter" {
  count            = var.enable_dcgm_exporter ? 1 : 0
  name             = "dcgm-exporter"
  repository       = "https://nvidia.github.io/dcgm-exporter/helm-charts"
  chart            = "dcgm-exporter"
  version          = var.dcgm_exporter_version
  namespace        = "monitoring"
  create_namespace = true
  values           = [file("${path.module}/values/dcgm-exporter.yaml")]

  # Its ServiceMonitor needs the Prometheus Operator CRDs.
  depends_on = [helm_release.kube_prometheus_stack]
}

# The batch steps (ingest, filter, eval) push their completion counts here; monitoring/k8s's ServiceMonitor
# scrapes it with honorLabels so the pushed job/run_id/stage labels survive.
resource "helm_release" "pushgateway" {
  count            = var.enable_kube_prometheus_stack ? 1 : 0
  name             = "prometheus-pushgateway"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "prometheus-pushgateway"
  version          = var.pushgateway_version
  namespace        = "monitoring"
  create_namespace = true
  atomic           = true
  values = [yamlencode({
    nodeSelector = local.system_node_selector
  })]

  depends_on = [helm_release.kube_prometheus_stack]
}

resource "helm_release" "argocd" {
  count            = var.enable_argocd ? 1 : 0
  name             = "argocd"
  repository       = "https://argoproj.github.io/argo-helm"
  chart            = "argo-cd"
  version          = var.argocd_version
  namespace        = "argocd"
  create_namespace = true
  atomic           = true
  values           = [file("${path.module}/values/argocd.yaml")]
}

resource "helm_release" "argocd_apps" {
  count      = var.enable_argocd ? 1 : 0
  name       = "soraflow-apps"
  repository = "https://argoproj.github.io/argo-helm"
  chart      = "argocd-apps"
  version    = var.argocd_apps_version
  namespace  = "argocd"
  values = [templatefile("${path.module}/values/argocd-apps.yaml.tftpl", {
    kfp_version              = var.kfp_version
    kfp_namespace            = var.kfp_namespace
    gitops_repo_url          = var.gitops_repo_url
    gitops_revision          = var.gitops_revision
    pipelines_revision       = var.pipelines_manifests_revision
    pipeline_root            = var.pipeline_root
    pipeline_runner_gsa      = var.pipeline_runner_gsa
    training_gsa             = var.training_gsa
    ci_gsa                   = var.ci_gsa
    training_ksa             = var.training_ksa_name
    volcano_gpu_quota        = var.volcano_gpu_quota
    runbook_base_url         = local.runbook_base_url
    enable_monitoring_app    = var.enable_kube_prometheus_stack
    enable_pipeline_manifest = var.enable_pipeline_manifests_app
  })]

  depends_on = [helm_release.argocd, helm_release.cert_manager, helm_release.volcano]
}
