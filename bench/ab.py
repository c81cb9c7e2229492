"""``python -m bench.ab --checkpoint PATH [--baseline REF]``: the service at this tree against
the service at another commit, interleaved, so that outside load hits both alike.

Each round starts both services in turn (the order alternates between rounds), warms them, and
drives every concurrency level; the report gives each side's median throughput and p50/p99 and
the ratio of medians. The baseline runs from a detached ``git worktree`` of ``REF`` (removed
afterwards) with this tree's virtual environment. Not part of CI; see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.__main__ import drive, parse_args, warm_up
from bench.frames import load_frames
from bench.loadgen import build_payloads
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    ServerProcess,
    clean_environ,
    free_port,
    running,
    service_env,
)
from bench.report import write_json

METRICS = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_ok", "batch_mean", "forward_ms")


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A detached checkout of ``ref`` in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), ref],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)],
                cwd=REPO_ROOT,
                check=False,
                capture_output=True,
            )


def side_command(tree: Path) -> list[str]:
    """``python -m src.serve`` run from ``tree`` (cwd decides which ``src`` is imported)."""
    return ["sh", "-c", f'cd "{tree}" && exec "{sys.executable}" -m src.serve']


def run_side(
    name: str, tree: Path, args: argparse.Namespace, checkpoint: Path, frames: list[bytes]
) -> dict[int, dict[str, Any]]:
    env = service_env(args, checkpoint, free_port(), args.max_queue_size)
    server = ServerProcess(name, side_command(tree), env, args.out / "logs")
    levels = {}
    with running(server, args.ready_timeout):
        payloads = build_payloads(server.port, API_KEY, frames)
        warm_up(server, payloads, args)
        for concurrency in args.concurrency:
            _, summary = drive(server, payloads, concurrency, args.requests, args, scrape=True)
            summary["batch_mean"] = summary["stages"]["batch_size"].get("mean", 0.0)
            summary["forward_ms"] = summary["stages"]["forward_ms"].get("mean", 0.0)
            levels[concurrency] = {key: summary[key] for key in (*METRICS, "statuses")}
            print(
                f"  {name:<9} c={concurrency:<4} {summary['throughput_rps']:7.1f} req/s  "
                f"p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  "
                f"cpu/ok {summary['server_cpu_ms_per_ok']} ms  batch {summary['batch_mean']}  "
                f"forward {summary['forward_ms']} ms  {summary['statuses']}",
                flush=True,
            )
    return levels


def summarise(rounds: list[dict[str, dict[int, dict[str, Any]]]], levels: list[int]) -> list[dict]:
    rows = []
    for concurrency in levels:
        row: dict[str, Any] = {"concurrency": concurrency}
        for metric in METRICS:
            for side in ("baseline", "current"):
                values = [r[side][concurrency][metric] for r in rounds]
                row[f"{side}_{metric}"] = round(statistics.median(values), 2)
            base = row[f"baseline_{metric}"]
            row[f"ratio_{metric}"] = round(row[f"current_{metric}"] / base, 3) if base else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| c | req/s baseline | req/s current | ratio | p50 ms base / cur | p99 ms base / cur "
        "| server CPU ms per answer base / cur | mean batch base / cur |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['baseline_throughput_rps']} | "
            f"{row['current_throughput_rps']} | {row['ratio_throughput_rps']} | "
            f"{row['baseline_p50_ms']} / {row['current_p50_ms']} | "
            f"{row['baseline_p99_ms']} / {row['current_p99_ms']} | "
            f"{row['baseline_server_cpu_ms_per_ok']} / {row['current_server_cpu_ms_per_ok']} | "
            f"{row['baseline_batch_mean']} / {row['current_batch_mean']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--baseline", default="HEAD~1", help="git ref of the baseline service")
    own.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over them)")
    known, rest = own.parse_known_args(argv)
    args = parse_args(["--concurrency", "1,32", "--out", "bench/results/ab", *rest])
    clean_environ()
    checkpoint = args.checkpoint.resolve()
    frames = load_frames(REPO_ROOT / "examples", count=args.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    rounds = []
    with worktree(known.baseline) as baseline_tree:
        for index in range(known.rounds):
            order = [("baseline", baseline_tree), ("current", REPO_ROOT)]
            if index % 2:
                order.reverse()
            print(f"round {index + 1}/{known.rounds}", flush=True)
            rounds.append(
                {name: run_side(name, tree, args, checkpoint, frames) for name, tree in order}
            )
    rows = summarise(rounds, args.concurrency)
    report = table(rows)
    print("\n" + report)
    write_json(
        {"baseline": known.baseline, "rounds": rounds, "medians": rows},
        args.out / "ab.json",
    )
    (args.out / "ab.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
