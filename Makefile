# One venv, made and kept up to date by `make setup`; every other target depends on it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-tools lint format typecheck demo-data demo-videos train-demo demo-version calibrate-demo reference-demo evaluate-demo bench hostile bench-video e2e explain-demo bench-explain gpu-check container-check lint-deploy clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-serve.txt requirements-torch.txt requirements-dev.txt \
		requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

DEMO_CKPT := checkpoints/deepfake-detector/0.1.0-demo/model.pt
DEMO_ONNX := checkpoints/deepfake-detector/0.1.0-demo/model.onnx

## Serve the committed demo model on http://127.0.0.1:8000 (key: demo-key in development); on a
## CPU through ONNX Runtime (DFD_BACKEND=auto), exported on first run and whenever model.pt or
## the installed packages change (the export refuses to write unless it matches torch).
run: setup $(DEMO_ONNX)
	$(PY) -m src.serve

$(DEMO_ONNX): $(DEMO_CKPT) $(STAMP)
	$(PY) -m src.export --checkpoint $(DEMO_CKPT)

## Lint, type-check and run the whole test suite with coverage.
## Debian's tools the tests drive: Chromium (tests/e2e, through Playwright) and promtool (the
## prometheus package: tests/deploy/test_alert_rules.py); installed when missing (needs root).
test-tools:
	@command -v chromium >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium prometheus >/dev/null)

test: setup test-tools lint typecheck
	$(PY) -m pytest --cov=src --cov-report=term-missing:skip-covered

## The web page in Debian's Chromium against a real server (also part of `make test`); installs
## Chromium when missing. Screenshots: tests/e2e/screenshots/ (git-ignored).
e2e: setup
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(PY) -m pytest -p no:cacheprovider tests/e2e

## Faithfulness of the explanations on the demo test fakes (the deletion metric), and the example
## overlays in docs/img (README "See why").
explain-demo: demo-data
	$(PY) -m src.train.evaluate --checkpoint $(DEMO_CKPT) --data data/demo --split val test \
		--explain --overlays docs/img

## Explanation speed: Grad-CAM against /infer's path on one image, LIME and SHAP at their defaults.
bench-explain: setup $(DEMO_ONNX)
	$(PY) -m bench.explain --checkpoint $(DEMO_CKPT) --image examples/fake_0.jpg $(BENCH_EXPLAIN_ARGS)

lint: setup
	$(PY) -m ruff check src tests bench deploy/docker
	$(PY) -m ruff format --check src tests bench deploy/docker

format: setup
	$(PY) -m ruff format src tests bench deploy/docker
	$(PY) -m ruff check --fix src tests bench deploy/docker

typecheck: setup
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage

## Build the offline demo data (pip-shipped real faces + self-blended fakes, split by identity).
demo-data: setup
	$(PY) -m src.data.make_demo --out data/demo --seed 0

## Rebuild examples/real_0.mp4 and fake_0.mp4 (a moving camera over a held-out face, and the
## same shot with the face self-blended the same way every frame); same files every run.
demo-videos: setup
	$(PY) -m src.data.make_videos --out examples --seed 0

## Retrain the demo model (~5 min on 2 CPU cores), install it as checkpoints/deepfake-detector/0.1.0-demo/model.pt and
## calibrate it (calibrate-demo).
train-demo: demo-data
	$(PY) -m src.train --data-dir data/demo --out-dir runs/demo --image-size 160 \
		--epochs 6 --batch-size 32 --lr 1e-3 --warmup-epochs 0.5 --workers 1 --face-crop \
		--version 0.1.0-demo --no-progress
	cp runs/demo/best.pt checkpoints/deepfake-detector/0.1.0-demo/model.pt
	$(MAKE) --no-print-directory calibrate-demo

## A second version of the demo model, for the canary walk-through (README "Model versions"):
## 20 steps of fine-tuning from $(DEMO_CKPT) at a tenth of its learning rate, calibrated and
## exported, into checkpoints/deepfake-detector/$(DEMO_V2)/ (git-ignored). ~2 min on 2 cores.
DEMO_V2 ?= 0.1.1-demo
DEMO_V2_DIR := checkpoints/deepfake-detector/$(DEMO_V2)
demo-version: demo-data
	$(PY) -m src.train --data-dir data/demo --out-dir runs/$(DEMO_V2) --image-size 160 \
		--epochs 1 --max-steps-per-epoch 20 --batch-size 32 --lr 1e-4 --warmup-epochs 0 \
		--workers 1 --face-crop --pretrained $(DEMO_CKPT) --version $(DEMO_V2) --no-progress
	mkdir -p $(DEMO_V2_DIR)
	cp runs/$(DEMO_V2)/best.pt $(DEMO_V2_DIR)/model.pt
	$(PY) -m src.train.calibrate --checkpoint $(DEMO_V2_DIR)/model.pt --data data/demo \
		--split val --threshold-rule keep
	$(PY) -m src.export --checkpoint $(DEMO_V2_DIR)/model.pt

## Temperature scaling fitted on the val split, written into checkpoints/deepfake-detector/0.1.0-demo/model.pt; the
## threshold stays 0.5 (why: checkpoints/deepfake-detector/0.1.0-demo/MODEL_CARD.md, "Calibration"). ~1 min.
calibrate-demo: demo-data
	$(PY) -m src.train.calibrate --checkpoint $(DEMO_CKPT) --data data/demo --split val \
		--threshold-rule keep --report test test_xmanip
	$(MAKE) --no-print-directory reference-demo

## Drift reference statistics of the val split (features and calibrated fake_prob), written into
## checkpoints/deepfake-detector/0.1.0-demo/model.pt's metadata; what GET /monitoring/drift compares traffic with. ~1 min.
reference-demo: demo-data
	$(PY) -m src.train.reference --checkpoint $(DEMO_CKPT) --data data/demo --split val

## Score the demo model on held-out identities (test) and a held-out manipulation (test_xmanip).
evaluate-demo: demo-data
	$(PY) -m src.train.evaluate --checkpoint checkpoints/deepfake-detector/0.1.0-demo/model.pt --data data/demo \
		--split test test_xmanip

## Load benchmark (not in CI; ~10 min, wants the machine to itself): raw model per backend, the
## service on torch and onnxruntime, naive baseline, face crop on (demo model). BENCH_ARGS: more
## flags, e.g. BENCH_ARGS="--face-reference-rps 12.3" (python -m bench --help).
BENCH_CKPT ?= bench/results/efficientnet_lite0_random.pt
BENCH_OUT ?= bench/results/latest
# Random weights: speed and robustness do not depend on the weights' values.
$(BENCH_CKPT): | $(STAMP)
	mkdir -p $(dir $(BENCH_CKPT))
	$(PY) -c "from src.models import *; save_checkpoint('$(BENCH_CKPT)', \
		build_model('efficientnet_lite0').state_dict(), \
		ModelMetadata(architecture='efficientnet_lite0', input_size=224, version='bench'))"

bench: setup $(BENCH_CKPT) $(DEMO_ONNX)
	$(PY) -m bench --checkpoint $(BENCH_CKPT) --requests 300 --concurrency 1,8,32,128 \
		--soak 10000 --out $(BENCH_OUT) $(BENCH_ARGS)
	$(PY) -m bench.limits --out $(BENCH_OUT)/limits
	$(PY) -m bench.store --checkpoint $(BENCH_CKPT) --out $(BENCH_OUT)/store
	$(PY) -m bench.oip --checkpoint $(BENCH_CKPT) --out $(BENCH_OUT)/oip
	$(PY) -m bench.lifecycle --out $(BENCH_OUT)/lifecycle
	$(MAKE) --no-print-directory bench-explain BENCH_EXPLAIN_ARGS="--json $(BENCH_OUT)/explain.json"

## Hostile clients (slow uploads, huge headers, silent sockets, decode bombs, deadlines), each
## against a fresh service with a normal client measuring; ~3-4 min; a table, never a failure.
hostile: setup $(BENCH_CKPT)
	$(PY) -m bench.hostile --checkpoint $(BENCH_CKPT) --out bench/results/hostile

## Videos and batches on the demo model (not in CI; ~2 min): a 10-s 720p clip's upload-to-answer
## time by stage, single-image latency while videos are scored, a batch of 32 vs one by one.
bench-video: setup $(DEMO_ONNX)
	$(PY) -m bench.video --out bench/results/video

## The CUDA path on a GPU machine: device choice, batched GPU inference, AMP training, benchmark.
gpu-check: setup
	bash scripts/gpu_check.sh

## Deployment checks (not in CI): Dockerfile/compose/k8s lint, and a real podman build + run.
lint-deploy: setup
	bash scripts/lint_deploy.sh

container-check: setup
	bash scripts/container_check.sh
