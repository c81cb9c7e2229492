"""Where a forward pass loses time: ``python -m bench.probe --checkpoint PATH``.

Three things the load benchmark cannot separate, each timed in a fresh process:

- the forward pass on the main thread, and on a worker thread with the model loaded on the main
  thread (as ``src/serve/app.py`` does: load on one thread, run on another) or on the worker;
- minor page faults per forward pass (glibc giving freed activation buffers back to the kernel;
  run once more with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set to compare);
- CPU time to decode and preprocess one benchmark frame.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from bench.frames import load_frames
from bench.procs import REPO_ROOT
from bench.stats import median
from src.media.images import ImageLimits, decode_image
from src.models import build_preprocess, read_checkpoint
from src.models.backends import torch as torch_backend

CASES = {
    "main": "load and run on the main thread",
    "worker-loaded-on-main": "load on the main thread, run on a worker thread",
    "worker-loaded-on-worker": "load and run on the same worker thread",
}


def _time_forward(classifier: Any, batch: int, iterations: int) -> dict[str, float]:
    size = classifier.metadata.input_size
    images = torch.randn(batch, 3, size, size)
    for _ in range(3):
        classifier.fake_probabilities(images)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        classifier.fake_probabilities(images)
        samples.append(time.perf_counter() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "batch": batch,
        "median_ms": round(median(samples) * 1000, 2),
        "faults_per_pass": round(faults / iterations),
    }


def run_case(case: str, checkpoint: str, threads: int, batches: list[int], iterations: int) -> list:
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    worker = ThreadPoolExecutor(max_workers=1)
    if case == "worker-loaded-on-worker":
        classifier = worker.submit(torch_backend.load, checkpoint, device).result()
    else:
        classifier = torch_backend.load(checkpoint, device)
    if case == "main":
        return [_time_forward(classifier, b, iterations) for b in batches]
    return [worker.submit(_time_forward, classifier, b, iterations).result() for b in batches]


def decode_cost(checkpoint: str, frames: int) -> dict[str, float]:
    jpegs = load_frames(REPO_ROOT / "examples", count=frames)
    limits = ImageLimits(frozenset({"JPEG"}), 10 << 20, 40_000_000, 12_000, 16)
    preprocess = build_preprocess(read_checkpoint(checkpoint).metadata)
    for jpeg in jpegs:
        preprocess(decode_image(jpeg, limits))
    started = time.process_time()
    for jpeg in jpegs * 3:
        preprocess(decode_image(jpeg, limits))
    return {
        "frames": len(jpegs),
        "cpu_ms_per_frame": round((time.process_time() - started) / (3 * len(jpegs)) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.case:
        rows = run_case(args.case, args.checkpoint, args.threads, batches, args.iterations)
        print(json.dumps(rows))
        return 0
    results: dict[str, Any] = {"decode_and_preprocess": decode_cost(args.checkpoint, args.frames)}
    for case, description in CASES.items():
        done = subprocess.run(
            [sys.executable, "-m", "bench.probe", *(argv or sys.argv[1:]), "--case", case],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
        cells = ", ".join(
            f"b{r['batch']}: {r['median_ms']} ms, {r['faults_per_pass']} faults"
            for r in results[case]
        )
        print(f"{description:<50} {cells}", flush=True)
    print(f"decode + preprocess: {results['decode_and_preprocess']}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
