"""``python -m bench.oip --checkpoint PATH``: the Open Inference Protocol with binary tensors
against ``POST /infer``, on one server, interleaved.

The same frames go both ways, one image per request: as multipart to ``/infer`` and as an OIP
binary request (a JSON header, then the image as a ``BYTES`` element) to
``/v2/models/{name}/infer`` asking for both outputs in binary. Each round drives ``/infer`` and
then OIP at every concurrency level (the order alternates between rounds, so outside load hits
both alike); the report gives each side's median throughput, p50/p99 and server CPU per answer,
the ratio of the medians, and the median of each round's own ratio, the figure checked against
the 0.95x target at c=32 (the least moved by load that comes and goes on a shared machine).
Not part of CI; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
from pathlib import Path
from typing import Any

from bench.__main__ import _int_list, drive, warm_up
from bench.frames import load_frames
from bench.loadgen import LOOPBACK, build_payloads
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    ServerProcess,
    add_service_arguments,
    clean_environ,
    free_port,
    running,
    service_command,
    service_env,
    stop_on_signals,
)
from bench.report import write_json

MODEL = "deepfake-detector"
TARGET_RATIO = 0.95
SIDES = ("infer", "oip")
# Server CPU per answer is the capacity figure that outside load on a shared machine disturbs
# least; throughput is the target's own figure.
METRICS = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_ok")


def oip_request(port: int, api_key: str, jpeg: bytes, model: str = MODEL) -> bytes:
    """A complete OIP binary inference request for one image, both outputs in binary."""
    raw = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\n"
        f"Host: {LOOPBACK}:{port}\r\n"
        f"X-API-Key: {api_key}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(header) + len(raw)}\r\n"
        "\r\n"
    ).encode()
    return head + header + raw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a dfd checkpoint (.pt)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level and side")
    parser.add_argument("--concurrency", type=_int_list, default=[32])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--frames", type=int, default=32, help="distinct JPEG frames to send")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "oip")
    add_service_arguments(parser)
    parser.add_argument("--level-time-limit", type=float, default=120.0, help="seconds per level")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds")
    return parser.parse_args(argv)


def summarise(
    rounds: list[dict[str, dict[int, dict[str, Any]]]], levels: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for concurrency in levels:
        row: dict[str, Any] = {"concurrency": concurrency}
        for metric in METRICS:
            for side in SIDES:
                values = [r[side][concurrency][metric] for r in rounds]
                row[f"{side}_{metric}"] = round(statistics.median(values), 2)
        base = row["infer_throughput_rps"]
        row["ratio"] = round(row["oip_throughput_rps"] / base, 3) if base else None
        pairs = [
            r["oip"][concurrency]["throughput_rps"] / r["infer"][concurrency]["throughput_rps"]
            for r in rounds
            if r["infer"][concurrency]["throughput_rps"]
        ]
        # Each round's two sides ran back to back: the median of their ratios is the figure
        # least moved by load that comes and goes on a shared machine.
        row["pair_ratio"] = round(statistics.median(pairs), 3) if pairs else None
        cpu = row["oip_server_cpu_ms_per_ok"]
        row["cpu_ratio"] = round(row["infer_server_cpu_ms_per_ok"] / cpu, 3) if cpu else None
        row["statuses"] = {
            side: [r[side][concurrency]["statuses"] for r in rounds] for side in SIDES
        }
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clean_environ()
    stop_on_signals()
    port = free_port()
    env = service_env(args, args.checkpoint, port, args.max_queue_size)
    env["DFD_MODEL_NAME"] = MODEL
    server = ServerProcess("service", service_command(), env, args.out / "logs")
    frames = load_frames(REPO_ROOT / "examples", args.frames)
    payloads = {
        "infer": build_payloads(port, API_KEY, frames),
        "oip": [oip_request(port, API_KEY, jpeg) for jpeg in frames],
    }
    rounds: list[dict[str, dict[int, dict[str, Any]]]] = []
    with running(server, args.ready_timeout):
        for side in SIDES:
            warm_up(server, payloads[side], args)
        for number in range(args.rounds):
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            results: dict[str, dict[int, dict[str, Any]]] = {side: {} for side in SIDES}
            for concurrency in args.concurrency:
                for side in order:
                    _, summary = drive(
                        server, payloads[side], concurrency, args.requests, args, scrape=False
                    )
                    results[side][concurrency] = summary
                    print(
                        f"  round {number + 1} {side:<5} c={concurrency:<4} "
                        f"{summary['throughput_rps']:7.1f} req/s  p50 {summary['p50_ms']} ms  "
                        f"p99 {summary['p99_ms']} ms  server CPU/answer "
                        f"{summary['server_cpu_ms_per_ok']} ms  {summary['statuses']}",
                        flush=True,
                    )
            rounds.append(results)
    rows = summarise(rounds, args.concurrency)
    print(
        "\n| c | /infer req/s | OIP binary req/s | ratio of medians | median ratio per round "
        "| p50 ms /infer / OIP | p99 ms | server CPU ms per answer | capacity ratio (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['concurrency']} | {row['infer_throughput_rps']} | "
            f"{row['oip_throughput_rps']} | {row['ratio']} | {row['pair_ratio']} | "
            f"{row['infer_p50_ms']} / "
            f"{row['oip_p50_ms']} | {row['infer_p99_ms']} / {row['oip_p99_ms']} | "
            f"{row['infer_server_cpu_ms_per_ok']} / {row['oip_server_cpu_ms_per_ok']} | "
            f"{row['cpu_ratio']} |"
        )
    write_json({"rounds": args.rounds, "levels": rows}, args.out / "results.json")
    c32 = next((row for row in rows if row["concurrency"] == 32), None)
    if c32 is not None:
        met = c32["pair_ratio"] is not None and c32["pair_ratio"] >= TARGET_RATIO
        print(
            f"target: OIP binary >= {TARGET_RATIO}x /infer at c=32 (median ratio per round): "
            f"{c32['pair_ratio']}x "
            f"({'met' if met else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
