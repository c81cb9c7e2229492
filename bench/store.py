"""``python -m bench.store --checkpoint PATH``: what the result store costs and what the result
cache saves, measured on two real servers.

1. **Throughput at c32, store on vs off, interleaved**: one server with the store on (SQLite,
   the memory cache: the defaults) and one with ``DFD_STORE=off DFD_CACHE=off``, both running
   for the whole run; ``--rounds`` rounds, each sending ``--requests`` requests at
   ``--concurrency`` to each server, the order alternating per round, so that a burst of outside
   load spreads over both. Every request carries distinct bytes (a JPEG comment segment with a
   counter), so each one is a cache miss and a stored row: the ratio is the store's cost on the
   request path, not the cache's gain.
2. **A cache hit's server time**: one image sent ``--hits`` times, one at a time, to the
   store-on server after a first miss; the answer's ``timings.total_ms`` (server time from the
   upload read to the answer: hashing, the lookup, the answer) and the client's round trip
   over loopback (an upper bound on the whole server time, HTTP parsing included).

Results: a table on stdout and ``--out``/store.json. Exit 1 when a target fails
(ratio >= 0.95, hit server time < 2 ms at the median).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.frames import generate_frames
from bench.loadgen import build_payloads, run_level
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    ServerProcess,
    add_service_arguments,
    free_port,
    process_cpu_s,
    service_command,
    service_env,
)
from bench.stats import summarize

RATIO_TARGET = 0.95
HIT_TARGET_MS = 2.0


def with_counter(jpeg: bytes, counter: int) -> bytes:
    """The same picture with a JPEG comment (COM) segment right after SOI: other bytes, another
    SHA-256, the same pixels and the same decoding work."""
    text = f"bench-{counter}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per round and side")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hits", type=int, default=200)
    parser.add_argument("--ready-timeout-s", type=float, default=180)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    add_service_arguments(parser)
    return parser.parse_args(argv)


def start(
    args: argparse.Namespace, name: str, store_dir: Path, extra: dict[str, str]
) -> ServerProcess:
    port = free_port()
    env = service_env(args, args.checkpoint, port, args.max_queue_size)
    env.update(
        DFD_DATABASE_URL=f"sqlite:///{store_dir / name / 'store.db'}",
        DFD_SPOOL_PATH=str(store_dir / name / "spool.jsonl"),
        DFD_JOBS_DIR=str(store_dir / name / "jobs"),
        **extra,
    )
    server = ServerProcess(name, service_command(), env, args.out / "logs")
    server.start(args.ready_timeout_s)
    return server


def throughput_rounds(
    args: argparse.Namespace, servers: dict[str, ServerProcess], frames: list[bytes]
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    counter = 0
    names = list(servers)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            server = servers[name]
            jpegs = []
            for _ in range(args.requests):
                jpegs.append(with_counter(frames[counter % len(frames)], counter))
                counter += 1
            payloads = build_payloads(server.port, API_KEY, jpegs)
            cpu_before = process_cpu_s(server.pid)
            level = asyncio.run(
                run_level(server.port, payloads, args.concurrency, args.requests, 300, 60)
            )
            summary = summarize(level.concurrency, level.wall_s, level.latencies_s, level.statuses)
            answered = max(1, summary["ok"])
            # CPU the server spent per answer (all its threads, the writer's included): the
            # store's cost, much less disturbed by other load on the machine than throughput.
            summary["server_cpu_ms_per_answer"] = (
                (process_cpu_s(server.pid) - cpu_before) * 1000 / answered
            )
            results[name].append(summary)
            server.check_alive()
            print(
                f"round {round_index + 1} {name}: {summary['throughput_rps']:.1f} req/s", flush=True
            )
    return results


def hit_times(args: argparse.Namespace, server: ServerProcess, frame: bytes) -> dict[str, float]:
    server_ms: list[float] = []
    round_trip_ms: list[float] = []
    headers = {"X-API-Key": API_KEY, "Content-Type": "image/jpeg"}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        first = client.post("/infer", content=frame, headers=headers)
        assert first.headers["x-cache"] == "miss", first.headers
        for _ in range(args.hits):
            sent = time.perf_counter()
            response = client.post("/infer", content=frame, headers=headers)
            round_trip_ms.append((time.perf_counter() - sent) * 1000)
            assert response.status_code == 200 and response.headers["x-cache"] == "hit"
            server_ms.append(response.json()["timings"]["total_ms"])
    quantiles = statistics.quantiles(round_trip_ms, n=100)
    return {
        "server_total_ms_p50": statistics.median(server_ms),
        "server_total_ms_p99": statistics.quantiles(server_ms, n=100)[98],
        "round_trip_ms_p50": statistics.median(round_trip_ms),
        "round_trip_ms_p99": quantiles[98],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = generate_frames(32, seed=7)
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        try:
            servers["store on"] = start(
                args, "store-on", Path(tmp), {"DFD_STORE": "on", "DFD_CACHE": "memory"}
            )
            servers["store off"] = start(
                args, "store-off", Path(tmp), {"DFD_STORE": "off", "DFD_CACHE": "off"}
            )
            rounds = throughput_rounds(args, servers, frames)
            hits = hit_times(args, servers["store on"], frames[0])
        finally:
            for server in servers.values():
                server.stop()
        # After SIGTERM the writer has flushed: every answer must be a row, none twice.
        rows = count_rows(Path(tmp) / "store-on" / "store.db")
    answers = args.rounds * args.requests + 1 + args.hits
    on = [r["throughput_rps"] for r in rounds["store on"]]
    off = [r["throughput_rps"] for r in rounds["store off"]]
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    cpu_on = [r["server_cpu_ms_per_answer"] for r in rounds["store on"]]
    cpu_off = [r["server_cpu_ms_per_answer"] for r in rounds["store off"]]
    report = {
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "throughput_rps": {"store on": on, "store off": off},
        "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_of_sums": sum(on) / sum(off),
        "server_cpu_ms_per_answer": {"store on": cpu_on, "store off": cpu_off},
        "cpu_ratio_off_over_on": statistics.median(cpu_off) / statistics.median(cpu_on),
        "rows_stored": rows,
        "answers_from_store_on": answers,
        "cache_hit": hits,
    }
    (args.out / "store.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    ok = (
        report["ratio_median"] >= RATIO_TARGET
        and hits["server_total_ms_p50"] < HIT_TARGET_MS
        and rows == answers
    )
    return 0 if ok else 1


def count_rows(database: Path) -> int:
    import sqlite3

    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM predictions").fetchone()[0])


def table(report: dict[str, Any]) -> str:
    on, off = report["throughput_rps"]["store on"], report["throughput_rps"]["store off"]
    lines = [
        "| round | store on (req/s) | store off (req/s) | on/off |",
        "|---|---|---|---|",
        *(
            f"| {i + 1} | {a:.1f} | {b:.1f} | {a / b:.3f} |"
            for i, (a, b) in enumerate(zip(on, off, strict=True))
        ),
        f"| median ratio | | | **{report['ratio_median']:.3f}** (target >= {RATIO_TARGET}) |",
        "",
        "| server CPU ms per answer | store on | store off |",
        "|---|---|---|",
        *(
            f"| round {i + 1} | {a:.2f} | {b:.2f} |"
            for i, (a, b) in enumerate(
                zip(
                    report["server_cpu_ms_per_answer"]["store on"],
                    report["server_cpu_ms_per_answer"]["store off"],
                    strict=True,
                )
            )
        ),
        f"| median off/on (the throughput ratio a CPU-bound server would reach) | "
        f"**{report['cpu_ratio_off_over_on']:.3f}** | |",
        "",
        f"rows stored by the store-on server: {report['rows_stored']} "
        f"(answers it gave: {report['answers_from_store_on']})",
        "",
        "| cache hit | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| server time (timings.total_ms) | {report['cache_hit']['server_total_ms_p50']:.3f} | "
        f"{report['cache_hit']['server_total_ms_p99']:.3f} |",
        f"| client round trip (loopback) | {report['cache_hit']['round_trip_ms_p50']:.3f} | "
        f"{report['cache_hit']['round_trip_ms_p99']:.3f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
