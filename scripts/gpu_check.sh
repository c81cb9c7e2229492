#!/usr/bin/env bash
# The CUDA path in one short run: device selection, batched inference on the device (same answers
# as the CPU), AMP training, and the load benchmark with the model on the GPU.
#
#   scripts/gpu_check.sh [OUT_DIR]           # on a machine with a GPU
#   DEVICE=cpu scripts/gpu_check.sh /tmp/x   # the same steps on the CPU (checks the script itself)
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). On the lent GPU machines
# (no venv; torch, timm, OpenCV, prometheus-client present) the serving packages travel as
# wheels: fastapi, starlette, uvicorn, uvloop, httptools, python-multipart, pydantic-settings,
# python-json-logger, matplotlib (see the device tool's README). Everything it writes goes
# to OUT_DIR (default bench/results/gpu_check). Exit status: non-zero at the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then AMP=fp16 BATCH=32 BENCH_REQUESTS=2000; else AMP=off BATCH=4 BENCH_REQUESTS=64; fi

echo "== 1. device selection and batched inference on $DEVICE"
"$PYTHON" - "$DEVICE" <<'EOF'
import sys
import numpy as np
import torch
from src.core.device import resolve_device
from src.core.settings import Settings
from src.models import build_crop
from src.models.backends import torch as torch_backend

want = sys.argv[1]
chosen = resolve_device("auto")
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "auto ->", chosen)
if want == "cuda":
    assert chosen.startswith("cuda"), f"auto picked {chosen} on a GPU machine"
    print("GPU:", torch.cuda.get_device_name(0))
    assert Settings(device="auto").effective_max_batch_size == 32
ckpt = "checkpoints/deepfake-detector/0.2.0-demo/model.pt"
on_device = torch_backend.load(ckpt, torch.device(want))
on_cpu = torch_backend.load(ckpt, torch.device("cpu"))
crop = build_crop(on_cpu.metadata)
rng = np.random.default_rng(0)
frames = [crop(rng.integers(0, 256, (200 + i, 180, 3), dtype=np.uint8)) for i in range(33)]
device_probs = on_device.fake_probabilities(on_device.prepare_batch(frames))
cpu_probs = on_cpu.fake_probabilities(on_cpu.prepare_batch(frames))
worst = float(np.max(np.abs(np.subtract(device_probs, cpu_probs))))
print(f"batch of {len(frames)} on {want}: max |p_{want} - p_cpu| = {worst:.2e}")
assert worst < 1e-3, "the device's answers differ from the CPU's"
EOF

echo "== 2. AMP training ($AMP) on $DEVICE: a small generated data set, 2 epochs"
"$PYTHON" - "$OUT/data" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageFilter

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for label in ("real", "fake"):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(48):
        image = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
        if label == "fake":  # a learnable difference: fakes are smoothed
            image = image.filter(ImageFilter.GaussianBlur(2))
        image.save(root / label / f"id{i % 12}_f{i:05d}.png")
EOF
"$PYTHON" -m src.train --data-dir "$OUT/data" --out-dir "$OUT/train" --arch efficientnet_lite0 \
  --pretrained none --image-size 96 --epochs 2 --batch-size 16 --device "$DEVICE" --amp "$AMP" \
  --workers 2 --no-progress
test -s "$OUT/train/best.pt" && cat "$OUT/train/metrics.csv"

echo "== 3. load benchmark with the model on $DEVICE (max batch $BATCH)"
"$PYTHON" -c "from src.models import *; save_checkpoint('$OUT/lite0_224.pt', \
build_model('efficientnet_lite0').state_dict(), \
ModelMetadata(architecture='efficientnet_lite0', input_size=224, version='bench'))"
status=0
"$PYTHON" -m bench --checkpoint "$OUT/lite0_224.pt" --device "$DEVICE" \
  --max-batch-size "$BATCH" --raw-batches "1,8,$BATCH" --concurrency 1,32,128 \
  --requests "$BENCH_REQUESTS" --soak 0 --out "$OUT/bench" || status=$?
echo "gpu_check: steps 1-2 passed; benchmark exit status $status (1 = a target failed)"
