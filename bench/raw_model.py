"""Forward-pass throughput of the model alone: ``python -m bench.raw_model --checkpoint PATH``.

Runs in its own process (the benchmark starts it before any server) with the same
``torch.set_num_threads`` as the server, and prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from bench.stats import median
from src.config import resolve_device
from src.models import load_classifier
from src.serve.__main__ import tune_allocator


def time_batch(classifier: Any, batch: int, warmup: int, min_iters: int, budget_s: float) -> dict:
    """Median seconds per forward pass at one batch size, after ``warmup`` untimed passes."""
    size = classifier.metadata.input_size
    # The layout the service hands the model (a channels-last view of its uint8 batch).
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=classifier.memory_format)
    for _ in range(warmup):
        classifier.fake_probabilities(images)
    first = time.perf_counter()
    classifier.fake_probabilities(images)
    estimate = time.perf_counter() - first
    iterations = max(min_iters, min(50, math.ceil(budget_s / max(estimate, 1e-6))))
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        classifier.fake_probabilities(images)
        samples.append(time.perf_counter() - started)
    seconds = median(samples)
    return {
        "batch": batch,
        "iterations": iterations,
        "median_ms": round(seconds * 1000, 3),
        "min_ms": round(min(samples) * 1000, 3),
        "throughput_ips": round(batch / seconds, 2),
    }


def measure(
    checkpoint: str,
    threads: int,
    device: str,
    batches: list[int],
    warmup: int = 3,
    min_iters: int = 7,
    budget_s: float = 2.0,
) -> dict[str, Any]:
    tune_allocator()  # the same allocator setting as `python -m src.serve`, for a fair ratio
    torch.set_num_threads(threads)
    classifier = load_classifier(checkpoint, torch.device(resolve_device(device)))
    rows = [time_batch(classifier, b, warmup, min_iters, budget_s) for b in sorted(set(batches))]
    best = max(rows, key=lambda row: row["throughput_ips"])
    batch1 = next((row for row in rows if row["batch"] == 1), None)
    return {
        "architecture": classifier.metadata.architecture,
        "input_size": classifier.metadata.input_size,
        "device": str(classifier.device),
        "torch_threads": torch.get_num_threads(),
        "batches": rows,
        "best": best,
        "batch1": batch1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_model", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per batch size")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    result = measure(args.checkpoint, args.threads, args.device, batches, budget_s=args.budget_s)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
