"""What the compiled pipeline pins about the cluster: images (by digest), node pools, volumes, timeouts.

One dataclass, so a compiled pipeline is a function of (this, the DAG code) and nothing else. The defaults are
the local names; `soraflow compile --cpu-image ...@sha256:... --gpu-image ...@sha256:...` pins released images.
The pool label, PVC and secret names match infra/terraform's outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DIGEST = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ClusterSettings:
    cpu_image: str = "soraflow-cpu:dev"
    gpu_image: str = "soraflow-gpu:dev"
    pool_label: str = "soraflow.io/pool"  # node label that names the pool; Terraform sets it on every pool
    cpu_pool: str = "cpu"
    gpu_pool: str = "gpu-h100"
    gpus_per_node: int = 8
    accelerator: str = "nvidia.com/gpu"
    data_pvc: str = "soraflow-data"  # data, checkpoints and model weights; ReadWriteMany (Filestore / EFS)
    data_mount: str = "/mnt/soraflow"
    # S3-style keys for fsspec when the bucket is not reached through Workload Identity (GKE) or IRSA (EKS);
    # mounted as optional, so clusters with workload identities need no secret at all.
    bucket_secret: str = "soraflow-bucket"
    bucket_secret_env: dict = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "aws-access-key-id",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key",
    })
    # How a training step uses the cluster: "volcano" = the KFP task is a small launcher on the CPU pool that
    # submits a torchx gang job (nnodes x gpus_per_node, the GPU image) and follows it; "in_pod" = the task
    # itself takes one GPU node and runs torchrun there.
    train_launcher: str = "volcano"
    volcano_queue: str = "soraflow-training"  # infra/gitops/cluster: the GPU-capped queue
    namespace: str = "kubeflow"
    shm_size: str = "64Gi"  # dataloader workers share batches through /dev/shm
    cpu_step_timeout_s: int = 6 * 3600
    train_step_timeout_s: int = 7 * 24 * 3600
    eval_timeout_s: int = 12 * 3600
    train_retries: int = 3  # a retried training task resumes from its last checkpoint on the PVC
    # where the retraining pipeline fetches a data.dvc revision (the repository's DVC remote on the cluster's
    # bucket; `soraflow data push` puts revisions there)
    dvc_remote: str = "gs://soraflow-data/dvc"
    # batch steps push completion counts here (infra's prometheus-pushgateway release); "" = no push
    pushgateway: str = "prometheus-pushgateway.monitoring.svc:9091"

    def require_digests(self) -> None:
        """Released pipelines reference images by digest, so a run is reproducible after a tag moves."""
        for name in ("cpu_image", "gpu_image"):
            value = getattr(self, name)
            if not DIGEST.match(value):
                raise ValueError(f"{name} {value!r} is not pinned by digest (expected REPO@sha256:<64 hex>)")
