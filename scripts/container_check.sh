#!/usr/bin/env bash
# End-to-end container check of both image targets (`make container-check`; not run in CI: it
# needs root, podman and ~30 GB of disk). It builds each target with podman (Dockerfile: `cpu`,
# torch-free; `cuda`, with the torch stack) and checks that the cpu image holds no torch. Then it
# starts the images RUNS times each, the targets taking turns so that both see the same machine
# load, and measures the time from `podman run` to the first 200 from /ready and the service's
# idle RSS. Then, per image, one more start: the image's HEALTHCHECK, examples/fake_0.jpg and
# real_0.jpg POSTed to /infer (X-API-Key), /metrics, BURST_S seconds of decode bombs (40-MP WebP
# files of a few dozen bytes, BURST_WAVE at once, beside a normal client that must keep getting
# 200s) for the peak RSS under the decode budget, and SIGTERM, expecting exit code 0. At the end
# it prints one table (image size, build time, /ready times, RSS, backend, answers) and compares
# the answers of the two targets (within TOLERANCE): the cpu image serves on ONNX Runtime, the
# cuda image is run with DFD_BACKEND=torch (on the CPU here), so the comparison is ONNX Runtime
# against torch, image against image.
# Last, the throughput step (bench/containers.py, `python -m bench.containers`): both images with
# the same settings on the same backend (DFD_BACKEND=onnxruntime in both, DFD_CACHE=off so every
# request runs the model, the same --cpus, threads and batching), driven at c=32 by the load
# generator (bench/loadgen.py) in interleaved rounds (cpu, cuda, cuda, cpu, ...), with each
# round's throughput, p50 and p99, the load average, the medians and the cpu / cuda ratio.
# Exits non-zero on the first failure (a throughput ratio below 1 is reported, not a failure).
#
# Environment knobs:
#   TARGETS        targets to build and run   (default "cpu cuda")
#   IMAGE_PREFIX   image name; tags are the targets (default localhost/dfd-api:cpu, :cuda)
#   BASE_IMAGE     base image              (default localhost/python-base:3.11, made with
#                                           debootstrap when missing; python:3.11-slim elsewhere)
#   TORCH_INDEX_URL  torch index build arg (default empty = pip's default index plus this
#                                           machine's local wheel indexes, see below)
#   DEMO_MODEL     the model repository folder (<model>/<version>) the images carry and serve
#                  (default deepfake-detector/0.2.0-demo; passed to the build as DEMO_MODEL)
#   SKIP_BUILD=1   reuse existing images (the base image is then not needed either)
#   RUNS           starts per target for the /ready time and idle RSS (default 3)
#   READY_TIMEOUT  seconds to wait for /ready (default 300)
#   MIN_FREE_GB_CUDA  free GB the cuda build needs, else it is skipped with a note (default 30)
#   TOLERANCE      largest |fake_prob difference| between targets (default 1e-4)
#   BURST_S        seconds of decode-bomb waves after the answers, for the peak RSS under the
#                  decode budget (default 20; 0: none)
#   BURST_WAVE     concurrent bomb senders (default 64, as bench.hostile's waves)
#   THROUGHPUT_ROUNDS     interleaved rounds of the throughput step (default 4; 0: skip it)
#   THROUGHPUT_CPUS       podman run --cpus for both images there (default: all cores)
#   THROUGHPUT_REQUESTS   requests per level (default 300)
#   THROUGHPUT_CONCURRENCY  levels (default 32; e.g. 1,32)
#   THROUGHPUT_WORKLOADS  frames (the load benchmark's frames, face crop off) and/or faces (the
#                         example photos, face crop on) (default frames,faces)
#   THROUGHPUT_OUT        where bench.containers writes containers.json/.md
#                         (default bench/results/containers)
#   THROUGHPUT_ARGS       more bench.containers flags, e.g. "--together" (both images loaded at
#                         the same time in each round: steadier on a machine shared with others)
#   PYTHON         the venv's python that runs bench.containers (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGETS="${TARGETS:-cpu cuda}"
IMAGE_PREFIX="${IMAGE_PREFIX:-localhost/dfd-api}"
BASE_IMAGE="${BASE_IMAGE:-localhost/python-base:3.11}"
TORCH_INDEX_URL="${TORCH_INDEX_URL-}"
RUNS="${RUNS:-3}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
MIN_FREE_GB_CUDA="${MIN_FREE_GB_CUDA:-30}"
TOLERANCE="${TOLERANCE:-1e-4}"
BURST_S="${BURST_S:-20}"
BURST_WAVE="${BURST_WAVE:-64}"
DEMO_MODEL="${DEMO_MODEL:-deepfake-detector/0.2.0-demo}"
THROUGHPUT_ROUNDS="${THROUGHPUT_ROUNDS:-4}"
THROUGHPUT_CPUS="${THROUGHPUT_CPUS:-$(nproc)}"
THROUGHPUT_REQUESTS="${THROUGHPUT_REQUESTS:-300}"
THROUGHPUT_CONCURRENCY="${THROUGHPUT_CONCURRENCY:-32}"
THROUGHPUT_WORKLOADS="${THROUGHPUT_WORKLOADS:-frames,faces}"
THROUGHPUT_OUT="${THROUGHPUT_OUT:-bench/results/containers}"
THROUGHPUT_ARGS="${THROUGHPUT_ARGS:-}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
API_KEY="demo-key"
EXAMPLES=(examples/fake_0.jpg examples/real_0.jpg)
CONTAINER=""
WORK="$(mktemp -d)"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if [ -n "$CONTAINER" ] && podman container exists "$CONTAINER" 2>/dev/null; then
        podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

for example in "${EXAMPLES[@]}"; do [ -f "$example" ] || fail "$example is missing"; done
[ -f src/serve/__main__.py ] || fail "src/serve/__main__.py is missing: the service cannot start"
[ -f "checkpoints/$DEMO_MODEL/model.pt" ] \
    || fail "checkpoints/$DEMO_MODEL/model.pt (the demo model the images carry, DEMO_MODEL) is missing"

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
if [ "${SKIP_BUILD:-0}" = "1" ]; then
    echo "SKIP_BUILD=1: using the images already built, no base image needed"
elif ! podman image exists "$BASE_IMAGE"; then
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
    # as Debian's slim images (python:3.11-slim's base) do: no manuals, docs or translations
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    as_root find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
    as_root tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs"
fi
if podman image exists "$BASE_IMAGE"; then
    echo "base image: $BASE_IMAGE ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" \
        | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
fi

# ------------------------------------------------------------- build args ---
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
            --build-arg "DEMO_MODEL=$DEMO_MODEL")
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
    echo "torch from pip's default index${extra:+ plus $extra}${links:+ and $links}: here that is"
    echo "torch's CUDA build (pip cannot reach download.pytorch.org), so the cuda image below is"
    echo "the CUDA image; the cpu image holds no torch whichever index the builder used."
else
    echo "torch from $TORCH_INDEX_URL"
fi

# ------------------------------------------------------------------ helpers ---
http() {  # http BASE_URL METHOD PATH [FILE] -> prints "STATUS BODY"
    python3 - "$API_KEY" "$@" <<'PY'
import sys, urllib.error, urllib.request, uuid
key, base, method, path = sys.argv[1:5]
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

wait_ready() {  # wait_ready BASE_URL START_NS CONTAINER -> prints ms from START_NS to the first 200
    python3 - "$@" "$READY_TIMEOUT" <<'PY'
import subprocess, sys, time, urllib.error, urllib.request
base, start_ns, container, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
polls = 0
while (time.time_ns() - start_ns) / 1e9 < timeout:
    try:
        with urllib.request.urlopen(base + "/ready", timeout=2) as r:
            if r.status == 200:
                print((time.time_ns() - start_ns) // 1_000_000)
                sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    polls += 1
    if polls % 40 == 0:  # every ~2 s: has the container died?
        state = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", container],
                               capture_output=True, text=True).stdout.strip()
        if state != "true":
            print("exited", file=sys.stderr)
            sys.exit(2)
    time.sleep(0.05)
sys.exit(1)
PY
}

rss_mb() {  # rss_mb CONTAINER -> resident MB of the container's processes (host /proc)
    local pid pids total=0 kb
    pid="$(podman inspect --format '{{.State.Pid}}' "$1")"
    pids="$pid $(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)"
    for p in $pids; do
        kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)"
        total=$(( total + ${kb:-0} ))
    done
    awk -v kb="$total" 'BEGIN { printf "%.1f", kb * 1024 / 1e6 }'
}

burst() {  # burst BASE_URL PID BOMB NORMAL -> waves of bombs beside a normal client; peak RSS
    python3 - "$API_KEY" "$@" "$BURST_S" "$BURST_WAVE" <<'PY'
import collections, sys, threading, time, urllib.error, urllib.request, uuid
key, base, pid, bomb_path, normal_path, seconds, wave = sys.argv[1:8]
seconds, wave = float(seconds), int(wave)

def body(path):
    boundary = uuid.uuid4().hex
    data = open(path, "rb").read()
    return boundary, (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                      f"filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()

def post(payload):
    boundary, data = payload
    req = urllib.request.Request(base + "/infer", data=data, method="POST", headers={
        "X-API-Key": key, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0

def rss_mb():
    total = 0
    pids = [pid] + open(f"/proc/{pid}/task/{pid}/children").read().split()
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total * 1024 / 1e6

bomb, normal = body(bomb_path), body(normal_path)
statuses = {"bomb": collections.Counter(), "normal": collections.Counter()}
stop = time.monotonic() + seconds
peak = [rss_mb()]
before = peak[0]

def sample():
    while time.monotonic() < stop + 2:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.05)

def bomber():
    while time.monotonic() < stop:
        statuses["bomb"][post(bomb)] += 1

def client():
    while time.monotonic() < stop:
        statuses["normal"][post(normal)] += 1

threads = [threading.Thread(target=sample)] + [threading.Thread(target=bomber) for _ in range(wave)]
threads += [threading.Thread(target=client) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(3)
print(f"peak RSS {peak[0]:.1f} MB (before {before:.1f} MB); bombs: {dict(statuses['bomb'])}; "
      f"normal client: {dict(statuses['normal'])}")
sys.exit(0 if set(statuses["normal"]) == {200} else 1)
PY
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

start_container() {  # start_container IMAGE NAME PORT [EXTRA podman run args...]
    local image="$1" name="$2" port="$3"; shift 3
    # read-only root as in compose and Kubernetes; /app/data (the SQLite store, spool, jobs) is
    # the volume there, a tmpfs here
    podman run -d --name "$name" --network=host --read-only --tmpfs /tmp \
        --tmpfs /app/data:rw,U --health-interval=disable \
        -e DFD_PORT="$port" -e DFD_ENV=development -e DFD_API_KEYS="$API_KEY" \
        "$@" "$image" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err"; fail "podman run $image"; }
}

# ------------------------------------------------------------------- build ---
declare -A SIZE BUILD_S READY_MS READY_MEDIAN IDLE_RSS AFTER_RSS PEAK_RSS BURST_AFTER_RSS BACKEND ANSWERS SKIPPED
BUILT=""
for target in $TARGETS; do
    case "$target" in cpu|cuda) ;; *) fail "unknown target $target (cpu, cuda)" ;; esac
    image="$IMAGE_PREFIX:$target"
    if [ "${SKIP_BUILD:-0}" != "1" ]; then
        if [ "$target" = "cuda" ]; then
            free_gb="$(df -BG --output=avail /var/lib/containers 2>/dev/null | tail -1 | tr -dc 0-9)"
            if [ "${free_gb:-0}" -lt "$MIN_FREE_GB_CUDA" ]; then
                echo "NOTE: cuda target skipped: ${free_gb} GB free under /var/lib/containers," \
                     "the torch CUDA build needs ~${MIN_FREE_GB_CUDA} GB (MIN_FREE_GB_CUDA)"
                SKIPPED[$target]=1
                continue
            fi
        fi
        step "building $image (--target $target)"
        build_start=$(date +%s)
        # docker format: the OCI image format has no HEALTHCHECK and podman would drop it
        set +e
        podman build --format docker --network=host --target "$target" "${build_args[@]}" \
            "${volumes[@]}" -t "$image" -f Dockerfile . 2>&1 | tee "$WORK/build-$target.log" \
            | grep --line-buffered -E '(STEP [0-9]|^wrote|^parity|^MTCNN|^[a-z_0-9]+\.jpg:|^error|^Installing torch)'
        status="${PIPESTATUS[0]}"
        set -e
        [ "$status" -eq 0 ] || { tail -40 "$WORK/build-$target.log"; fail "podman build --target $target"; }
        BUILD_S[$target]=$(( $(date +%s) - build_start ))
        echo "build took ${BUILD_S[$target]} s"
    fi
    podman image exists "$image" || fail "image $image missing"
    SIZE[$target]="$(podman image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f", $1 / 1e6 }')"
    hc="$(podman image inspect --format '{{json .Config.Healthcheck}}' "$image")"
    case "$hc" in *"/ready"*) ;; *) fail "image $image has no HEALTHCHECK on /ready: $hc" ;; esac
    if [ "$target" = "cpu" ]; then
        step "$image holds no torch"
        podman run --rm "$image" python -c '
import importlib.metadata as md, importlib.util as u, sys
found = [m for m in ("torch", "torchvision", "timm", "captum") if u.find_spec(m)]
nvidia = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("nvidia-"))
print("torch-family modules:", found or "none", "| nvidia wheels:", nvidia or "none")
sys.exit(1 if found or nvidia else 0)' 2>/dev/null || fail "$image holds torch"
    fi
    BUILT="$BUILT $target"
done

run_args() {  # the cuda image answers with torch (on the CPU here): the cpu image's reference
    RUN_ARGS=()
    if [ "$1" = "cuda" ]; then RUN_ARGS=(-e DFD_BACKEND=torch -e DFD_DEVICE=cpu); fi
}

start_ready() {  # start_ready TARGET NAME -> starts it, waits for /ready; sets BASE_URL, MS
    local port start_ns
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    BASE_URL="http://127.0.0.1:$port"
    CONTAINER="$2"
    run_args "$1"
    start_ns=$(date +%s%N)
    start_container "$IMAGE_PREFIX:$1" "$CONTAINER" "$port" "${RUN_ARGS[@]}"
    # (podman without systemd logs errors about healthcheck timers; `podman healthcheck run`
    #  below runs the check itself)
    if ! MS="$(wait_ready "$BASE_URL" "$start_ns" "$CONTAINER")"; then
        podman logs "$CONTAINER" 2>&1 | tail -40
        fail "$1: /ready did not answer 200 within ${READY_TIMEOUT}s"
    fi
}

# ------------------------------------------------- start-up, interleaved ---
# The targets take turns, so that both see the same machine load.
step "start-up: $RUNS rounds of$BUILT, interleaved (podman run -> /ready, then idle RSS)"
for run in $(seq 1 "$RUNS"); do
    for target in $BUILT; do
        start_ready "$target" "dfd-check-$target-$$-$run"
        sleep 3  # let start-up settle before reading the idle RSS
        rss="$(rss_mb "$CONTAINER")"
        echo "round $run, $target: /ready after ${MS} ms from podman run; idle RSS ${rss} MB"
        READY_MS[$target]="${READY_MS[$target]:-} $MS"
        IDLE_RSS[$target]="${IDLE_RSS[$target]:-} $rss"
        podman rm -f -t 30 "$CONTAINER" >/dev/null 2>&1
    done
done
for target in $BUILT; do
    READY_MS[$target]="${READY_MS[$target]# }"
    READY_MEDIAN[$target]="$(printf '%s' "${READY_MS[$target]}" | median)"
done

# ------------------------------------------------------ answers and more ---
for target in $BUILT; do
    step "$target: /ready, HEALTHCHECK, POST /infer, /metrics"
    start_ready "$target" "dfd-check-$target-$$"
    ready="$(http "$BASE_URL" GET /ready)"
    echo "/ready: $ready"
    BACKEND[$target]="$(printf '%s' "${ready#* }" | python3 -c 'import json, sys; print(json.load(sys.stdin)["backend"])')"
    podman healthcheck run "$CONTAINER" >/dev/null 2>&1 || fail "the image's HEALTHCHECK failed on a ready container"
    echo "HEALTHCHECK (python urllib -> /ready): healthy"

    answers=""
    for example in "${EXAMPLES[@]}"; do
        answer="$(http "$BASE_URL" POST /infer "$example")"
        echo "$example -> $answer"
        [ "${answer%% *}" = "200" ] || fail "/infer did not answer 200"
        prob="$(printf '%s' "${answer#* }" | python3 -c 'import json, sys; print(repr(json.load(sys.stdin)["fake_prob"]))')" \
            || fail "/infer answer has no fake_prob"
        answers="$answers $(basename "$example")=$prob"
    done
    ANSWERS[$target]="${answers# }"
    AFTER_RSS[$target]="$(rss_mb "$CONTAINER")"

    metrics="$(http "$BASE_URL" GET /metrics)"
    [ "${metrics%% *}" = "200" ] || fail "/metrics did not answer 200"
    names="$(printf '%s\n' "$metrics" | grep -oE '^dfd_[a-z_]+' | sort -u || true)"
    [ -n "$names" ] || fail "/metrics has no dfd_ metrics"
    echo "/metrics: $(printf '%s\n' "$names" | wc -l) dfd_ metric names"

    if [ "$BURST_S" != "0" ]; then
        step "$target: decode-budget burst (${BURST_S} s of waves of $BURST_WAVE WebP bombs of 40 MP)"
        podman exec "$CONTAINER" python -c '
import io, sys
from PIL import Image
b = io.BytesIO()
Image.new("RGB", (12000, 3333), (90, 120, 150)).save(b, format="WEBP", lossless=True, method=0)
sys.stdout.buffer.write(b.getvalue())' >"$WORK/bomb.webp"
        burst="$(burst "$BASE_URL" "$(podman inspect --format '{{.State.Pid}}' "$CONTAINER")" "$WORK/bomb.webp" examples/real_0.jpg)" \
            || { echo "$burst"; fail "burst: the normal client did not get only 200s"; }
        echo "$burst"
        PEAK_RSS[$target]="$(printf '%s\n' "$burst" | sed -n 's/^peak RSS \([0-9.]*\) MB.*/\1/p')"
        BURST_AFTER_RSS[$target]="$(rss_mb "$CONTAINER")"
        echo "RSS 5 s after the burst: ${BURST_AFTER_RSS[$target]} MB"
    fi

    step "$target: SIGTERM (podman stop -t 30)"
    stop_start=$(date +%s%N)
    podman stop -t 30 "$CONTAINER" >/dev/null 2>"$WORK/stop.err" || { cat "$WORK/stop.err"; fail "podman stop"; }
    stop_ms=$(( ($(date +%s%N) - stop_start) / 1000000 ))
    exit_code="$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
    echo "stopped in ${stop_ms} ms, exit code $exit_code"
    podman logs "$CONTAINER" 2>&1 | grep -E '"(backend|draining|Application shutdown)' | tail -4 | cut -c1-240 | sed 's/^/  log: /'
    [ "$exit_code" = "0" ] || fail "exit code after SIGTERM was $exit_code, expected 0"
    podman rm -f "$CONTAINER" >/dev/null
done

# -------------------------------------------------- throughput, interleaved ---
THROUGHPUT=""
both=0
case " $BUILT " in *" cpu "*) case " $BUILT " in *" cuda "*) both=1 ;; esac ;; esac
if [ "$THROUGHPUT_ROUNDS" != "0" ]; then
    if [ "$both" = "1" ]; then
        step "throughput: $THROUGHPUT_ROUNDS rounds of cpu and cuda${THROUGHPUT_ARGS:+ ($THROUGHPUT_ARGS)}, both on ONNX Runtime (bench.containers)"
        [ -x "$PYTHON" ] || fail "$PYTHON not found (make setup): bench.containers needs the venv"
        "$PYTHON" -m bench.containers \
            --images "$IMAGE_PREFIX:cpu,$IMAGE_PREFIX:cuda" --backend onnxruntime \
            --rounds "$THROUGHPUT_ROUNDS" --cpus "$THROUGHPUT_CPUS" \
            --concurrency "$THROUGHPUT_CONCURRENCY" --requests "$THROUGHPUT_REQUESTS" \
            --workloads "$THROUGHPUT_WORKLOADS" --ready-timeout "$READY_TIMEOUT" \
            --out "$THROUGHPUT_OUT" $THROUGHPUT_ARGS || fail "bench.containers"
        THROUGHPUT="$THROUGHPUT_OUT/containers.md"
    else
        echo "NOTE: throughput step skipped: it needs both targets (built:$BUILT)"
    fi
fi

# ---------------------------------------------------------------- summary ---
step "summary (commit $(git -C "$ROOT" log -1 --format=%h 2>/dev/null || echo '?'), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '| target | image size | build | podman run -> /ready: median (runs) | idle RSS: median (runs) | RSS after the demo answers | peak RSS in the burst / 5 s after | backend | fake_prob |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for target in $TARGETS; do
    if [ -n "${SKIPPED[$target]:-}" ]; then
        printf '| %s | not built (disk) | | | | | | | |\n' "$target"
        continue
    fi
    idle="${IDLE_RSS[$target]# }"
    printf '| %s | %s MB | %s | %s ms (%s) | %s MB (%s) | %s MB | %s | %s | %s |\n' "$target" \
        "${SIZE[$target]}" "${BUILD_S[$target]:+${BUILD_S[$target]} s}" "${READY_MEDIAN[$target]}" \
        "${READY_MS[$target]// /, }" "$(printf '%s' "$idle" | median)" "${idle// /, }" \
        "${AFTER_RSS[$target]}" \
        "${PEAK_RSS[$target]:+${PEAK_RSS[$target]} / ${BURST_AFTER_RSS[$target]} MB}" \
        "${BACKEND[$target]}" "${ANSWERS[$target]}"
done

if [ -n "${READY_MS[cpu]:-}" ] && [ -n "${READY_MS[cuda]:-}" ]; then
    python3 - "${READY_MS[cpu]}" "${READY_MS[cuda]}" <<'PY'
import statistics, sys
cpu, cuda = ([int(v) for v in arg.split()] for arg in sys.argv[1:3])
ratios = [b / a for a, b in zip(cpu, cuda)]
print("start-up, cuda / cpu per round: " + ", ".join(f"{r:.2f}" for r in ratios)
      + f" (median {statistics.median(ratios):.2f}x)")
PY
fi

if [ -n "${ANSWERS[cpu]:-}" ] && [ -n "${ANSWERS[cuda]:-}" ]; then
    step "answers: cpu (ONNX Runtime) vs cuda (torch), tolerance $TOLERANCE"
    python3 - "$TOLERANCE" "${ANSWERS[cpu]}" "${ANSWERS[cuda]}" <<'PY' || fail "the targets' answers differ"
import sys
tol = float(sys.argv[1])
cpu, cuda = (dict(item.split("=") for item in arg.split()) for arg in sys.argv[2:4])
worst = 0.0
for name in cpu:
    diff = abs(float(cpu[name]) - float(cuda[name]))
    worst = max(worst, diff)
    print(f"{name}: cpu {float(cpu[name]):.7f} cuda {float(cuda[name]):.7f} |diff| {diff:.2e}")
print(f"max |diff| {worst:.2e} {'<=' if worst <= tol else '>'} {tol:g}")
sys.exit(0 if worst <= tol else 1)
PY
else
    echo "NOTE: answers not compared: only ${TARGETS// /, } ran${SKIPPED[*]:+ (skipped: ${!SKIPPED[*]})}"
fi

if [ -n "$THROUGHPUT" ] && [ -f "$THROUGHPUT" ]; then
    step "throughput at the same settings on ONNX Runtime (cpu image / cuda image; $THROUGHPUT)"
    cat "$THROUGHPUT"
fi

step "container check passed"
