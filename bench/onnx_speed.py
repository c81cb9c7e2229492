"""fp32 vs int8 ONNX Runtime speed: ``python -m bench.onnx_speed --checkpoint PATH``.

Loads ``model.onnx`` and ``model.int8.onnx`` beside the checkpoint through the serving backend
(``Backend.score`` on uint8 crops, normalisation included), with ``--threads`` intra-op threads,
and times them *interleaved* (fp32 round, int8 round, ...) so drift in the machine hits both
alike. Prints the median images/s per precision and batch size as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from src.core.settings import DEFAULT_CHECKPOINT
from src.models.backends import onnxruntime as onnx_backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.onnx_speed", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per batch")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    args = parser.parse_args(argv)
    backends = {}
    for precision in ("fp32", "int8"):  # timed even when int8 is not offered (AUC gate)
        path = onnx_backend.export_path(args.checkpoint, precision)
        info = onnx_backend.read_export(path.read_bytes(), path)
        backends[precision] = onnx_backend.from_bytes(
            path.read_bytes(), info.metadata, threads=args.threads, source=str(path)
        )
    size = backends["fp32"].metadata.input_size
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {p: {} for p in backends}
    for batch in args.batch:
        crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
        for backend in backends.values():
            backend.warm_up([batch])
        rates: dict[str, list[float]] = {p: [] for p in backends}
        for _ in range(args.rounds):
            for precision, backend in backends.items():
                done, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < args.seconds:
                    backend.score(crops)
                    done += batch
                rates[precision].append(done / elapsed)
        for precision in backends:
            results[precision][f"batch{batch}_images_per_s"] = round(
                statistics.median(rates[precision]), 1
            )
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "median": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
