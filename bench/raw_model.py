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
from src.core.device import resolve_device
from src.models.backends import torch as torch_backend
from src.serve.memory import tune_allocator


def _inputs(classifier: Any, batch: int) -> torch.Tensor:
    size = classifier.metadata.input_size
    # The layout the service hands the model (a channels-last view of its uint8 batch).
    images = torch.randn(batch, 3, size, size)
    return images.contiguous(memory_format=classifier.memory_format)


def time_batches(
    classifier: Any, batches: list[int], warmup: int, min_rounds: int, budget_s: float
) -> list[dict[str, Any]]:
    """Median seconds per forward pass at each batch size, after ``warmup`` untimed passes.

    The sizes are timed round-robin (one pass of each per round) rather than one after the
    other, so that a burst of load from elsewhere on a shared machine spreads over every size
    instead of spoiling one. Rounds: as many as fit ``budget_s`` per size, at least
    ``min_rounds``, at most 50.
    """
    inputs = {batch: _inputs(classifier, batch) for batch in batches}
    estimates = {}
    for batch, images in inputs.items():
        for _ in range(warmup):
            classifier.fake_probabilities(images)
        started = time.perf_counter()
        classifier.fake_probabilities(images)
        estimates[batch] = time.perf_counter() - started
    rounds = max(min_rounds, min(50, math.ceil(budget_s / max(max(estimates.values()), 1e-6))))
    samples: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(rounds):
        for batch, images in inputs.items():
            started = time.perf_counter()
            classifier.fake_probabilities(images)
            samples[batch].append(time.perf_counter() - started)
    rows = []
    for batch in batches:
        seconds = median(samples[batch])
        rows.append(
            {
                "batch": batch,
                "iterations": rounds,
                "median_ms": round(seconds * 1000, 3),
                "min_ms": round(min(samples[batch]) * 1000, 3),
                "throughput_ips": round(batch / seconds, 2),
            }
        )
    return rows


def measure(
    checkpoint: str,
    threads: int,
    device: str,
    batches: list[int],
    warmup: int = 3,
    min_rounds: int = 7,
    budget_s: float = 2.0,
    channels_last: bool = True,
) -> dict[str, Any]:
    tune_allocator()  # the same allocator setting as `python -m src.serve`, for a fair ratio
    torch.set_num_threads(threads)
    classifier = torch_backend.load(
        checkpoint, torch.device(resolve_device(device)), channels_last=channels_last
    )
    rows = time_batches(classifier, sorted(set(batches)), warmup, min_rounds, budget_s)
    best = max(rows, key=lambda row: row["throughput_ips"])
    batch1 = next((row for row in rows if row["batch"] == 1), None)
    return {
        "architecture": classifier.metadata.architecture,
        "input_size": classifier.metadata.input_size,
        "device": str(classifier.device),
        "torch_threads": torch.get_num_threads(),
        "channels_last": channels_last,
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
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="load the model in the default NCHW layout instead of channels-last (comparison)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    result = measure(
        args.checkpoint,
        args.threads,
        args.device,
        batches,
        budget_s=args.budget_s,
        channels_last=not args.contiguous,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
