#!/usr/bin/env bash
# End-to-end container check (`make container-check`; not run in CI: it needs root, podman and
# several GB of disk). Builds the image with podman, runs it with the demo checkpoint mounted,
# waits for /ready, POSTs an image to /infer, checks /metrics, stops it with SIGTERM and expects
# exit code 0. Exits non-zero on the first failure.
#
# Environment knobs:
#   IMAGE          tag to build            (default localhost/dfd-api:check)
#   BASE_IMAGE     base image              (default localhost/python-base:3.11, made with
#                                           debootstrap when missing; python:3.11-slim elsewhere)
#   TORCH_INDEX_URL  torch index build arg (default empty = pip's default index plus this
#                                           machine's local wheel indexes, see below)
#   SKIP_BUILD=1   reuse an existing $IMAGE
#   READY_TIMEOUT  seconds to wait for /ready (default 300)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${IMAGE:-localhost/dfd-api:check}"
BASE_IMAGE="${BASE_IMAGE:-localhost/python-base:3.11}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
API_KEY="demo-key"
CONTAINER="dfd-check-$$"
WORK="$(mktemp -d)"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if podman container exists "$CONTAINER" 2>/dev/null; then
        podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ------------------------------------------------------------------ podman ---
step "podman"
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    echo "installing podman + runc (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
if [ ! -f /etc/containers/containers.conf ]; then
    echo "writing /etc/containers/containers.conf (runc, cgroupfs, no default ulimits)"
    as_root mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
        | as_root tee /etc/containers/containers.conf >/dev/null
fi
podman --version

# -------------------------------------------------------------- base image ---
if ! podman image exists "$BASE_IMAGE"; then
    if [ "$BASE_IMAGE" != "localhost/python-base:3.11" ]; then
        fail "base image $BASE_IMAGE not found and no registry is reachable to pull it"
    fi
    step "building $BASE_IMAGE with debootstrap (Debian bookworm, python3.11)"
    command -v debootstrap >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    rootfs="$WORK/rootfs"
    as_root debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
        bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs"
fi
echo "base image: $BASE_IMAGE"

# ------------------------------------------------------------------- build ---
if [ "${SKIP_BUILD:-0}" != "1" ]; then
    step "building $IMAGE"
    build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    volumes=()
    if [ -z "$TORCH_INDEX_URL" ]; then
        # Give the build what pip reaches on this machine: PyPI plus local wheel indexes
        # (file:// URLs and find-links dirs from pip's config), mounted read-only into RUN steps.
        extra="$(python3 -m pip config get global.extra-index-url 2>/dev/null || true)"
        links="$(python3 -m pip config get global.find-links 2>/dev/null || true)"
        extra="${extra//\'/}"; links="${links//\'/}"
        for url in $extra; do
            dir="${url#file://}"
            [ "$dir" != "$url" ] && [ -d "$dir" ] && volumes+=(-v "$(dirname "$dir"):$(dirname "$dir"):ro")
        done
        for dir in $links; do
            [ -d "$dir" ] && volumes+=(-v "$dir:$dir:ro")
        done
        cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
        cert="${cert//\'/}"
        if [ -n "$cert" ] && [ -f "$cert" ]; then
            # this machine reaches PyPI through a proxy whose CA only the host bundle has
            volumes+=(-v "$cert:$cert:ro")
            build_args+=(--build-arg "PIP_CERT=$cert")
        fi
        [ -n "$extra" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
        [ -n "$links" ] && build_args+=(--build-arg "PIP_FIND_LINKS=$links")
        echo "NOTE: torch is installed from pip's default index${extra:+ plus $extra}${links:+ and $links}."
        echo "      Here that is torch's CUDA build (pip cannot reach download.pytorch.org), so the image"
        echo "      size below is NOT the size of the CPU image (TORCH_VARIANT=cpu) that CI/CD would build."
    else
        echo "torch from $TORCH_INDEX_URL"
    fi
    build_start=$(date +%s)
    # docker format: the OCI image format has no HEALTHCHECK and podman would drop it
    podman build --format docker --network=host "${build_args[@]}" "${volumes[@]}" -t "$IMAGE" -f Dockerfile . \
        || fail "podman build"
    echo "build took $(( $(date +%s) - build_start )) s"
fi
podman image exists "$IMAGE" || fail "image $IMAGE missing"

# --------------------------------------------------------------------- run ---
[ -f src/serve/__main__.py ] || fail "src/serve/__main__.py is missing: the service cannot start"
CHECKPOINT_DIR="$ROOT/checkpoints"
if [ ! -f checkpoints/demo/model.pt ]; then
    # No committed demo checkpoint yet: write a random-weight one with the repo's own format.
    [ -x .venv/bin/python ] || fail "checkpoints/demo/model.pt is missing (and no .venv to make one)"
    CHECKPOINT_DIR="$WORK/checkpoints"
    .venv/bin/python -c '
import sys, timm
from src.models.checkpoint import ModelMetadata, save_checkpoint
model = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=2)
save_checkpoint(sys.argv[1], model.state_dict(), ModelMetadata(architecture="mobilenetv3_large_100", version="container-check"))
' "$CHECKPOINT_DIR/demo/model.pt" || fail "could not write a stand-in checkpoint"
    chmod -R a+rX "$CHECKPOINT_DIR"
    echo "NOTE: checkpoints/demo/model.pt missing: using a random-weight stand-in checkpoint"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE_URL="http://127.0.0.1:$PORT"

step "running $IMAGE on port $PORT"
start_ns=$(date +%s%N)
podman run -d --name "$CONTAINER" --network=host --read-only --tmpfs /tmp --health-interval=disable \
    -e DFD_PORT="$PORT" -e DFD_ENV=development -e DFD_API_KEYS="$API_KEY" \
    -e DFD_CHECKPOINT_PATH=/app/checkpoints/demo/model.pt \
    -v "$CHECKPOINT_DIR:/app/checkpoints:ro" \
    "$IMAGE" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "podman run"; }
# (podman without systemd logs errors about healthcheck timers; `podman healthcheck run` below
#  runs the check itself)

http() {  # http METHOD PATH [FILE] -> prints "STATUS BODY"
    python3 - "$BASE_URL" "$API_KEY" "$@" <<'PY'
import sys, urllib.error, urllib.request, uuid
base, key, method, path = sys.argv[1:5]
data, headers = None, {"X-API-Key": key}
if len(sys.argv) > 5:
    boundary = uuid.uuid4().hex
    with open(sys.argv[5], "rb") as f:
        payload = f.read()
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except OSError as e:
    print(0, e)
PY
}

step "waiting for /ready (timeout ${READY_TIMEOUT}s)"
ready=""
while [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -lt "$READY_TIMEOUT" ]; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" != "true" ]; then
        podman logs "$CONTAINER" 2>&1 | tail -40
        fail "container exited before becoming ready"
    fi
    status="$(http GET /ready | cut -d' ' -f1)"
    if [ "$status" = "200" ]; then ready=1; break; fi
    sleep 0.5
done
if [ -z "$ready" ]; then
    podman logs "$CONTAINER" 2>&1 | tail -40
    fail "/ready did not answer 200 within ${READY_TIMEOUT}s"
fi
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
echo "ready after ${ready_ms} ms (from podman run)"
echo "/health: $(http GET /health)"
hc="$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")"
case "$hc" in *"/ready"*) ;; *) fail "image has no HEALTHCHECK on /ready: $hc" ;; esac
podman healthcheck run "$CONTAINER" >/dev/null 2>&1 || fail "the image's HEALTHCHECK failed on a ready container"
echo "HEALTHCHECK (python urllib -> /ready): healthy"

step "POST /infer"
image=""
for candidate in examples/fake_0.jpg examples/real_0.jpg; do
    [ -f "$candidate" ] && { image="$candidate"; break; }
done
if [ -z "$image" ]; then
    image="$WORK/generated.jpg"
    podman exec "$CONTAINER" python -c \
        'import io, sys, numpy as np; from PIL import Image; b = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(b, "JPEG"); sys.stdout.buffer.write(b.getvalue())' \
        >"$image"
    echo "(no examples/*.jpg: using a generated 256x256 JPEG)"
fi
answer="$(http POST /infer "$image")"
echo "$image -> $answer"
[ "${answer%% *}" = "200" ] || fail "/infer did not answer 200"
case "$answer" in *fake_prob*) ;; *) fail "/infer answer has no fake_prob" ;; esac

step "GET /metrics"
metrics="$(http GET /metrics)"
[ "${metrics%% *}" = "200" ] || fail "/metrics did not answer 200"
names="$(printf '%s\n' "$metrics" | grep -oE '^dfd_[a-z_]+' | sort -u || true)"
[ -n "$names" ] || fail "/metrics has no dfd_ metrics"
echo "dfd_ metric names: $(printf '%s\n' "$names" | wc -l)"
printf '%s\n' "$names" | sed 's/^/  /' | head -40

step "SIGTERM (podman stop -t 30)"
stop_start=$(date +%s%N)
podman stop -t 30 "$CONTAINER" >/dev/null 2>"$WORK/stop.err" || { cat "$WORK/stop.err"; fail "podman stop"; }
stop_ms=$(( ($(date +%s%N) - stop_start) / 1000000 ))
exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
echo "stopped in ${stop_ms} ms, exit code $exit_code"
podman logs "$CONTAINER" 2>&1 | tail -8 | sed 's/^/  log: /'
[ "$exit_code" = "0" ] || fail "exit code after SIGTERM was $exit_code, expected 0"

step "image size"
podman image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{ printf "%s: %.2f GB (%.0f bytes)\n", "'"$IMAGE"'", $1 / 1e9, $1 }'
if [ -z "$TORCH_INDEX_URL" ]; then
    echo "(built with torch from pip's default index here: the CUDA build, not the CPU image's size)"
fi

step "container check passed"
