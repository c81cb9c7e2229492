# Deepfake-detection inference service images: two targets.
#
#   cpu   (the default, and what docker-compose.yml and deploy/k8s/base run): no PyTorch. The
#         serving set (requirements-serve.txt) on ONNX Runtime, with the demo model exported to
#         ONNX at build time (parity with torch checked) and MTCNN's ONNX graphs.
#           docker build --target cpu -t dfd-api:cpu .
#   cuda  the same plus the torch stack (requirements-torch.txt): the torch backend on a GPU,
#         Grad-CAM and integrated gradients (deploy/k8s/gpu runs it).
#           docker build --target cuda --build-arg TORCH_VARIANT=cu124 -t dfd-api:cu124 .
#         (TORCH_VARIANT=cpu, the default, gives the same image with PyTorch's CPU build.)
# torch from the default index (plain PyPI, or whatever PIP_INDEX_URL/PIP_EXTRA_INDEX_URL reach):
#   --build-arg TORCH_INDEX_URL=
# See DEPLOYMENT.md. Both images carry the demo model repository (/app/checkpoints, served with
# DFD_MODEL_REPOSITORY); API keys and settings come in at run time (DFD_* environment), and a
# volume mounted on /app/checkpoints replaces the demo model. Nothing secret is baked in.

ARG BASE_IMAGE=python:3.11-slim

# ------------------------------------------------------------- serve-venv ---
# /opt/venv with the serving set only: what the cpu image runs. No torch is installed here.
FROM ${BASE_IMAGE} AS serve-venv

# Optional mirrors for air-gapped builds (not secrets: never put credentials here).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
# CA bundle for a TLS-intercepting proxy/mirror (a path mounted into the build, not a secret).
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The venv holds no pip or setuptools (~25 MB the image does not need): the base image's pip
# installs into it (`pip --python`).
RUN python3 -m venv --without-pip /opt/venv

COPY requirements-serve.txt requirements-nodeps.txt /tmp/

# pip compiles every module (.pyc): the containers run with a read-only root, where Python
# could not write them and would compile the service's imports again at every start.
RUN set -eu; \
    python3 -m pip --python /opt/venv/bin/python install --no-cache-dir \
        -r /tmp/requirements-serve.txt; \
    python3 -m pip --python /opt/venv/bin/python check; \
    # MTCNN face-detector weights (DFD_FACE_CROP); read without torch, the package is never
    # imported (its torch pin is why it goes in with --no-deps).
    python3 -m pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        "$(grep -oE '^facenet-pytorch==[^ ]+' /tmp/requirements-nodeps.txt)"

# ------------------------------------------------------------------ torch ---
# The serving set plus the torch stack: the cuda image's venv, and what the model export runs on.
FROM serve-venv AS torch

# PyTorch wheel variant: "cpu" or a CUDA tag such as "cu124" (selects the index below).
ARG TORCH_VARIANT=cpu
# Index that torch/torchvision are installed from; empty = the default index (PyPI).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT

COPY requirements-torch.txt /tmp/

# torch/torchvision first from the selected index (the pins match "2.14.1+cpu"-style
# local versions there), then everything else; pip keeps the torch already installed.
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
        echo "Installing torch from ${TORCH_INDEX_URL}"; \
        grep -E '^(torch|torchvision)==' /tmp/requirements-torch.txt > /tmp/torch-index.txt; \
        python3 -m pip --python /opt/venv/bin/python install --no-cache-dir \
            --index-url "${TORCH_INDEX_URL}" -r /tmp/torch-index.txt; \
    else \
        echo "Installing torch from the default index"; \
    fi; \
    python3 -m pip --python /opt/venv/bin/python install --no-cache-dir \
        -r /tmp/requirements-serve.txt -r /tmp/requirements-torch.txt; \
    # pip check, but for facenet-pytorch's own pins (it is there for its weights, --no-deps)
    python3 -m pip --python /opt/venv/bin/python check > /tmp/pip-check.txt || true; \
    if grep -v -e '^facenet-pytorch ' -e '^No broken requirements' /tmp/pip-check.txt; then \
        exit 1; \
    fi

# ----------------------------------------------------------------- models ---
# Exports with torch, checked against torch, for the images to copy: the demo model's ONNX file
# beside its model.pt (python -m src.export refuses to write one whose fake_prob differs from
# torch's by more than its tolerance on examples/*.jpg and random crops), and MTCNN's ONNX graphs
# (deploy/docker/face_detector_onnx.py, the same parity idea). A failed check fails the build.
FROM torch AS models

# The model repository folder (<model>/<version>) the images serve.
ARG DEMO_MODEL=deepfake-detector/0.2.0-demo

ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY src ./src
COPY examples/*.jpg ./examples/
COPY deploy/docker/face_detector_onnx.py ./deploy/docker/
COPY checkpoints/${DEMO_MODEL} ./checkpoints/${DEMO_MODEL}
RUN set -eu; \
    python -m src.export --checkpoint "checkpoints/${DEMO_MODEL}/model.pt"; \
    python deploy/docker/face_detector_onnx.py /build/mtcnn-onnx; \
    # the service's own modules, compiled once (unchecked: the image never changes them)
    python -m compileall -q --invalidation-mode unchecked-hash src; \
    chmod -R a+rX /build/checkpoints /build/mtcnn-onnx /build/src

# ---------------------------------------------------------------- runtime ---
# What both images share: user, environment, the writable data folder, health check, command.
FROM ${BASE_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DFD_HOST=0.0.0.0 \
    DFD_PORT=8000 \
    DFD_ENV=production \
    DFD_LOG_FORMAT=json \
    DFD_MODEL_REPOSITORY=/app/checkpoints \
    MTCNN_ONNX_CACHE=/app/mtcnn-onnx

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app
# The store's SQLite file, spool, job inputs and recordings (DFD_DATABASE_URL's default, src/store):
# the one folder the service writes; a volume mounted here keeps them.
RUN mkdir -p /app/data && chown 10001:10001 /app/data

EXPOSE 8000
# SIGTERM starts the drain (DFD_DRAIN_TIMEOUT_S, 20 s). An image cannot carry a stop timeout and
# `docker stop`/`podman stop` wait 10 s by default: run it with `--stop-timeout 30` (or stop it
# with `-t 30`); compose's stop_grace_period and Kubernetes' grace period do the same there.
STOPSIGNAL SIGTERM

# /ready: 200 only once the model is loaded and warmed, 503 while draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request as r; tls = bool(os.environ.get('DFD_SSL_CERTFILE')); url = ('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('DFD_PORT', '8000') + '/ready'; sys.exit(0 if r.urlopen(url, timeout=4, context=ssl._create_unverified_context()).status == 200 else 1)"]

CMD ["python", "-m", "src.serve"]

# ------------------------------------------------------------------- cuda ---
FROM runtime AS cuda

LABEL org.opencontainers.image.title="dfd-api" \
      org.opencontainers.image.description="Deepfake-detection inference service (FastAPI + PyTorch; CUDA with TORCH_VARIANT=cu*)"

ARG DEMO_MODEL=deepfake-detector/0.2.0-demo
# auto: torch on a GPU; on a CPU, ONNX Runtime where the export beside the checkpoint matches.
ENV DFD_BACKEND=auto

COPY --from=torch /opt/venv /opt/venv
COPY --from=models /build/mtcnn-onnx /app/mtcnn-onnx
COPY --from=models /build/checkpoints/${DEMO_MODEL} /app/checkpoints/${DEMO_MODEL}
COPY --from=models /build/src /app/src

USER 10001:10001

# -------------------------------------------------------------------- cpu ---
# Last, so that a plain `docker build .` builds it.
FROM runtime AS cpu

LABEL org.opencontainers.image.title="dfd-api" \
      org.opencontainers.image.description="Deepfake-detection inference service (FastAPI + ONNX Runtime, no PyTorch)"

ARG DEMO_MODEL=deepfake-detector/0.2.0-demo
# No torch here: serve the ONNX export, and refuse to start (naming the export command) when a
# mounted model repository has no export made from its model.pt.
ENV DFD_BACKEND=onnxruntime \
    DFD_DEVICE=cpu

COPY --from=serve-venv /opt/venv /opt/venv
COPY --from=models /build/mtcnn-onnx /app/mtcnn-onnx
COPY --from=models /build/checkpoints/${DEMO_MODEL} /app/checkpoints/${DEMO_MODEL}
COPY --from=models /build/src /app/src

USER 10001:10001
