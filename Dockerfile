# syntax=docker/dockerfile:1
# TuneForge images, one Dockerfile, three stages that matter:
#   build  builds the tuneforge wheel once (no dependencies)
#   api    control plane only: `pip install` of the wheel with base dependencies, no torch (small, starts fast)
#   gpu    the wheel with the [train] extra on a CUDA build of torch: `tuneforge worker` and `tuneforge inference`
# docker compose builds them with `target: api` and `target: gpu`; see docker-compose.yml and deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNEFORGE_DATA_DIR=/data
# A fixed non-root user; /data belongs to it so a fresh named volume mounted there is writable.
RUN useradd --create-home --uid 10001 --user-group tuneforge \
 && mkdir -p /data \
 && chown tuneforge:tuneforge /data
WORKDIR /home/tuneforge

FROM base AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS api
COPY --from=build /wheels /wheels
RUN pip install /wheels/tuneforge-*.whl \
 && rm -rf /wheels
USER tuneforge
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["tuneforge", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS gpu
# PyPI's Linux torch wheels are CUDA builds that bring their own CUDA runtime; the host needs only the
# NVIDIA driver and container toolkit. Pinned, and installed before the extra so nothing picks another torch.
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/tuneforge-*.whl)[train]" \
 && rm -rf /wheels
USER tuneforge
VOLUME ["/data"]
CMD ["tuneforge", "worker"]
