# soraflow GPU image: vae_train, DiT stages 1-3, distill and eval (torchrun workers and the KFP tasks).
# Build from the repository root:  docker build -f docker/gpu.Dockerfile -t soraflow-gpu:dev .
# Released pipelines reference it by digest (`soraflow compile --release --gpu-image REPO@sha256:...`).
# The base brings CUDA, cuDNN, NCCL and a matching torch; pip keeps that torch (it satisfies torch>=2.5).
ARG BASE=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${BASE}

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NCCL_NVLS_ENABLE=0 \
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1

WORKDIR /opt/soraflow
COPY pyproject.toml setup.py README.md ./
COPY soraflow ./soraflow
COPY cli ./cli
COPY common ./common
COPY components ./components
COPY inference ./inference
COPY models ./models
COPY monitoring ./monitoring
COPY pipelines ./pipelines
COPY training ./training
RUN pip install . && python -c "import torch, kfp, soraflow.components, soraflow.training; print(torch.__version__)"

# Trainer metrics endpoint (rank 0), scraped through the PodMonitor in monitoring/k8s.
EXPOSE 9464
