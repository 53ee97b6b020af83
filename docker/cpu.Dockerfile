# soraflow CPU image: ingest and filter (and the training launcher tasks that submit Volcano jobs).
# Build from the repository root:  docker build -f docker/cpu.Dockerfile -t soraflow-cpu:dev .
# Released pipelines reference it by digest (`soraflow compile --release --cpu-image REPO@sha256:...`).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# ffmpeg: scene detection, crop detection and VMAF motion in curation; git: DVC needs it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /opt/soraflow
# The CPU wheel of torch: the default index would pull a multi-GB CUDA build into a CPU image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.5"
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
# kfp comes with the project: the compiled components set install_kfp_package=False, nothing installs at run time.
RUN pip install . && python -c "import kfp, soraflow.components, soraflow.pipelines; print('ok')"

RUN useradd --create-home --uid 1000 soraflow
USER 1000
