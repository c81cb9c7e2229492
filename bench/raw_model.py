"""Forward-pass throughput of the model alone: ``python -m bench.raw_model --checkpoint PATH``.

Runs in its own process (the benchmark starts it before any server) with the same
``torch.set_num_threads`` as the server, and prints one JSON object on stdout.

``--backend forward`` (the default, kept for continuity with earlier runs) times the torch
backend's ``fake_probabilities`` on a float batch. ``--backend torch|onnxruntime|onnxruntime-int8``
times ``Backend.score`` on uint8 SxSx3 crops, which is what the service calls (normalisation
included): the torch backend, the fp32 export beside the checkpoint (``model.onnx``), or the
int8 export beside it (``model.int8.onnx``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.stats import median
from src.core.device import resolve_device
from src.models.backends import torch as torch_backend
from src.serve.memory import tune_allocator

FORWARD = "forward"
SCORE_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
INT8_SUFFIX = ".int8.onnx"


def int8_path(checkpoint: str | Path) -> Path:
    """Where an int8 export of ``checkpoint`` lives (``model.pt`` -> ``model.int8.onnx``)."""
    return Path(checkpoint).with_suffix(INT8_SUFFIX)


def _inputs(classifier: Any, batch: int) -> torch.Tensor:
    size = classifier.metadata.input_size
    # The layout the service hands the model (a channels-last view of its uint8 batch).
    images = torch.randn(batch, 3, size, size)
    return images.contiguous(memory_format=classifier.memory_format)


def time_batches(
    classifier: Any, batches: list[int], warmup: int, min_rounds: int, budget_s: float
) -> list[dict[str, Any]]:
    """Median seconds per forward pass at each batch size (see :func:`time_calls`)."""
    calls = {}
    for batch in batches:
        images = _inputs(classifier, batch)
        calls[batch] = lambda images=images: classifier.fake_probabilities(images)
    return time_calls(calls, warmup, min_rounds, budget_s)


def time_calls(
    calls: dict[int, Callable[[], Any]], warmup: int, min_rounds: int, budget_s: float
) -> list[dict[str, Any]]:
    """Median seconds per call at each batch size, after ``warmup`` untimed calls.

    The sizes are timed round-robin (one pass of each per round) rather than one after the
    other, so that a burst of load from elsewhere on a shared machine spreads over every size
    instead of spoiling one. Rounds: as many as fit ``budget_s`` per size, at least
    ``min_rounds``, at most 50.
    """
    estimates = {}
    for batch, call in calls.items():
        for _ in range(warmup):
            call()
        started = time.perf_counter()
        call()
        estimates[batch] = time.perf_counter() - started
    rounds = max(min_rounds, min(50, math.ceil(budget_s / max(max(estimates.values()), 1e-6))))
    samples: dict[int, list[float]] = {batch: [] for batch in calls}
    for _ in range(rounds):
        for batch, call in calls.items():
            started = time.perf_counter()
            call()
            samples[batch].append(time.perf_counter() - started)
    rows = []
    for batch in calls:
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


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rows, key=lambda row: row["throughput_ips"])
    batch1 = next((row for row in rows if row["batch"] == 1), None)
    return {"batches": rows, "best": best, "batch1": batch1}


def load_scoring_backend(name: str, checkpoint: str, threads: int, device: str) -> Any:
    """A ``Backend`` for ``name`` in :data:`SCORE_BACKENDS`; the int8 export is read with the
    fp32 loader's pieces (its own ``metadata_props``), since no backend name serves it yet."""
    from src.models.backends import load_backend

    if name == "onnxruntime-int8":
        from src.models.backends import onnxruntime as ort_backend

        path = int8_path(checkpoint)
        data = path.read_bytes()
        info = ort_backend.read_export(data, path)
        return ort_backend.from_bytes(data, info.metadata, threads=threads, source=str(path))
    return load_backend(name, checkpoint, device=resolve_device(device), threads=threads)


def measure_backend(
    name: str,
    checkpoint: str,
    threads: int,
    device: str,
    batches: list[int],
    warmup: int = 3,
    min_rounds: int = 7,
    budget_s: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """``Backend.score`` on random uint8 crops at each batch size (normalisation included)."""
    tune_allocator()
    torch.set_num_threads(threads)
    backend = load_scoring_backend(name, checkpoint, threads, device)
    size = backend.metadata.input_size
    rng = np.random.default_rng(seed)
    calls = {}
    for batch in sorted(set(batches)):
        crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
        calls[batch] = lambda crops=crops: backend.score(crops)
    rows = time_calls(calls, warmup, min_rounds, budget_s)
    info = backend.describe()
    return {
        "backend": name,
        "call": "score(uint8 crops)",
        "architecture": backend.metadata.architecture,
        "input_size": size,
        "device": str(info.device),
        "threads": threads,
        "torch_threads": threads,
        **_summary(rows),
    }


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
    return {
        "backend": FORWARD,
        "call": "fake_probabilities(float batch)",
        "architecture": classifier.metadata.architecture,
        "input_size": classifier.metadata.input_size,
        "device": str(classifier.device),
        "torch_threads": torch.get_num_threads(),
        "channels_last": channels_last,
        **_summary(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_model", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backend",
        choices=(FORWARD, *SCORE_BACKENDS),
        default=FORWARD,
        help="forward: the torch model's forward pass on a float batch (default); the others: "
        "Backend.score on uint8 crops",
    )
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per batch size")
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="load the model in the default NCHW layout instead of channels-last (comparison)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.backend != FORWARD:
        result = measure_backend(
            args.backend,
            args.checkpoint,
            args.threads,
            args.device,
            batches,
            budget_s=args.budget_s,
        )
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
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
