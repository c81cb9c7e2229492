"""``python -m bench.writer``: the result writer's own CPU per stored row, without a server.

Results are handed to a real :class:`ResultWriter` on a SQLite file at a steady rate (the
service's c=32 throughput on this machine is 120-170 answers/s), and the writer thread's CPU is
read from ``/proc/self/task/<tid>/schedstat``: what the store costs the request threads' CPU
budget, free of the load noise that a throughput ratio carries. Each ``--linger`` is run
``--rounds`` times, interleaved; the table gives the median per linger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from src.store import migrate, writer
from src.store.db import make_engine, session_factory
from src.store.repository import PredictionRecord
from src.store.spool import Spool


def record() -> PredictionRecord:
    return PredictionRecord(
        request_id=uuid.uuid4().hex,
        sha256="a" * 64,
        input_bytes=50_000,
        model_name="deepfake-detector",
        model_version="0.1.0-demo",
        fake_prob=0.3,
        label="real",
        threshold=0.5,
        key_id="k1",
        media_type="image/jpeg",
        timings={"queue_ms": 1.2, "preprocess_ms": 3.4, "inference_ms": 5.6, "total_ms": 10.2},
    )


def thread_cpu_ms(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/schedstat") as handle:
        return int(handle.read().split()[0]) / 1e6


def one_run(directory: Path, linger_s: float, rows: int, rate: float) -> float:
    """The writer thread's CPU ms per row at ``rate`` rows/s with ``linger_s``."""
    engine = make_engine(f"sqlite:///{directory / 'store.db'}")
    migrate.upgrade(engine)
    writer.LINGER_S = linger_s
    result_writer = writer.ResultWriter(
        session_factory(engine), Spool(directory / "spool.jsonl", 1 << 30)
    )
    result_writer.start()
    thread = result_writer._thread
    assert isinstance(thread, threading.Thread) and thread.native_id is not None
    records = [record() for _ in range(rows)]
    before = thread_cpu_ms(thread.native_id)
    start = time.perf_counter()
    for index, item in enumerate(records):
        result_writer.submit(item)
        time.sleep(max(0.0, start + (index + 1) / rate - time.perf_counter()))
    assert result_writer.flush(30)
    spent = thread_cpu_ms(thread.native_id) - before
    result_writer.stop()
    engine.dispose()
    return spent / rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__)
    parser.add_argument("--linger", default="0.05,0.2", help="seconds, comma-separated")
    parser.add_argument("--rate", type=float, default=130.0, help="rows per second")
    parser.add_argument("--rows", type=int, default=1300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write writer.json here")
    args = parser.parse_args(argv)
    lingers = [float(value) for value in args.linger.split(",")]
    results: dict[float, list[float]] = {linger: [] for linger in lingers}
    for _ in range(args.rounds):
        for linger in lingers:
            with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
                results[linger].append(one_run(Path(tmp), linger, args.rows, args.rate))
    print(f"writer thread CPU per row at {args.rate:g} rows/s, median of {args.rounds}:")
    print("| linger s | CPU ms per row | runs |")
    print("|---|---|---|")
    for linger, values in results.items():
        runs = ", ".join(f"{value:.3f}" for value in values)
        print(f"| {linger:g} | {statistics.median(values):.3f} | {runs} |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {str(linger): values for linger, values in results.items()}
        (args.out / "writer.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
