# Deepfake-detection inference service image.
#
# Build (CPU wheels from PyPI's PyTorch CPU index, the default):
#   docker build -t dfd-api:cpu .
# CUDA wheels:
#   docker build --build-arg TORCH_VARIANT=cu124 -t dfd-api:cu124 .
# torch from the default index (plain PyPI, or whatever PIP_INDEX_URL/PIP_EXTRA_INDEX_URL reach):
#   docker build --build-arg TORCH_INDEX_URL= -t dfd-api .
# See DEPLOYMENT.md. Checkpoints, API keys and settings come in at run time
# (volume + DFD_* environment); nothing secret is baked into the image.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder ---
FROM ${BASE_IMAGE} AS builder

# PyTorch wheel variant: "cpu" or a CUDA tag such as "cu124" (selects the index below).
ARG TORCH_VARIANT=cpu
# Index that torch/torchvision are installed from; empty = the default index (PyPI).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Optional mirrors for air-gapped builds (not secrets: never put credentials here).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# CA bundle for a TLS-intercepting proxy/mirror (a path mounted into the build, not a secret).
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements-serve.txt requirements-torch.txt requirements-nodeps.txt /tmp/

# torch/torchvision first from the selected index (the pins match "2.14.1+cpu"-style
# local versions there), then everything else; pip keeps the torch already installed.
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
        echo "Installing torch from ${TORCH_INDEX_URL}"; \
        grep -E '^(torch|torchvision)==' /tmp/requirements-torch.txt > /tmp/torch-index.txt; \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" -r /tmp/torch-index.txt; \
    else \
        echo "Installing torch from the default index"; \
    fi; \
    pip install --no-cache-dir -r /tmp/requirements-serve.txt -r /tmp/requirements-torch.txt; \
    pip check; \
    # MTCNN face-detector weights (DFD_FACE_CROP); the package is never imported.
    pip install --no-cache-dir --no-deps \
        "$(grep -oE '^facenet-pytorch==[^ ]+' /tmp/requirements-nodeps.txt)"; \
    find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------- runtime ---
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="dfd-api" \
      org.opencontainers.image.description="Deepfake-detection inference service (FastAPI + PyTorch)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DFD_HOST=0.0.0.0 \
    DFD_PORT=8000 \
    DFD_ENV=production \
    DFD_LOG_FORMAT=json \
    DFD_CHECKPOINT_PATH=/app/checkpoints/demo/model.pt

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --chown=root:root src ./src
# The store's SQLite file, spool, job inputs and recordings (DFD_DATABASE_URL's default, src/store):
# the one folder the service writes; a volume mounted here keeps them.
RUN mkdir -p /app/data && chown 10001:10001 /app/data

USER 10001:10001
EXPOSE 8000
# SIGTERM starts the drain (DFD_DRAIN_TIMEOUT_S, 20 s). An image cannot carry a stop timeout and
# `docker stop`/`podman stop` wait 10 s by default: run it with `--stop-timeout 30` (or stop it
# with `-t 30`); compose's stop_grace_period and Kubernetes' grace period do the same there.
STOPSIGNAL SIGTERM

# /ready: 200 only once the model is loaded and warmed, 503 while draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as r; tls = bool(os.environ.get('DFD_SSL_CERTFILE')); url = ('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('DFD_PORT', '8000') + '/ready'; sys.exit(0 if r.urlopen(url, timeout=4, context=ssl._create_unverified_context()).status == 200 else 1)"]

CMD ["python", "-m", "src.serve"]
