"""``python -m bench.containers``: the container images against each other under load, on the same
backend and the same CPU limit (``scripts/container_check.sh`` runs it after its other checks).

Each image (default ``localhost/dfd-api:cpu`` and ``:cuda``, built already) is started with
``podman run`` exactly alike: host network, read-only root, ``--cpus``, and the same ``DFD_*``
settings (``DFD_BACKEND=onnxruntime`` and ``DFD_DEVICE=cpu`` in both, so that the torch-free image
meets the torch image on one backend; ``DFD_CACHE=off``, so that every request runs the model; the
same threads, preprocess workers and batching). Per workload, the load generator
(:mod:`bench.loadgen`) sends ``--requests`` ``POST /infer`` from ``--concurrency`` keep-alive
connections (default 32) after a warm-up:

* ``frames``: the load benchmark's frames (the example faces pasted into 224-640 px generated
  scenes, :mod:`bench.frames`), face crop off: decode, resize, the model, HTTP;
* ``faces``: the example face photos themselves (``examples/*.jpg``), face crop on, as the demo
  model is served by default: MTCNN (ONNX Runtime in both images) before the model.

The images take turns round by round, the order reversed every other round (cpu, cuda, cuda,
cpu, ...), so that outside load (this machine is shared) falls on both alike. With
``--together`` both are started, then loaded at the same time in each round (each from its own
``--concurrency`` connections): both see the same outside load at the same moment, each getting
about half of the cores. The report gives, per workload and level, each round's throughput, p50
and p99 with the 1-minute load average, the medians, and the ratio of median throughputs (first
image / second image) with the per-round ratios. Target of the torch-free image issue: the cpu
image's throughput no lower than the torch image's. Needs root or rootful podman; not part of CI
(see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.frames import load_frames
from bench.loadgen import build_payloads, run_level
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    SERVICE_HISTOGRAMS,
    ServerProcess,
    free_port,
    load_average,
    machine_busy_s,
    process_cpu_s,
    rss_mb,
    stop_on_signals,
)
from bench.report import write_json
from bench.stats import LevelResult, describe_histogram, histogram_delta

WORKLOADS = {"frames": "off", "faces": "on"}
"""Workload name -> DFD_FACE_CROP."""
DEFAULT_IMAGES = ("localhost/dfd-api:cpu", "localhost/dfd-api:cuda")
STAGES = {
    "preprocess_ms": "dfd_preprocess_seconds",
    "forward_ms": "dfd_model_inference_seconds",
}
assert set(STAGES.values()) <= set(SERVICE_HISTOGRAMS)


def _list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, not {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in _list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def _workloads(text: str) -> list[str]:
    values = _list(text)
    unknown = [v for v in values if v not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(f"workloads are {', '.join(WORKLOADS)}, not {unknown}")
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        prog="python -m bench.containers",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--images", type=_list, default=list(DEFAULT_IMAGES), metavar="A,B")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median)")
    parser.add_argument("--concurrency", type=_int_list, default=[32], help="levels, e.g. 1,32")
    parser.add_argument("--requests", type=int, default=300, help="requests per level")
    parser.add_argument("--workloads", type=_workloads, default=list(WORKLOADS))
    parser.add_argument("--backend", default="onnxruntime", help="DFD_BACKEND in every image")
    parser.add_argument(
        "--cpus", type=float, default=float(cpus), help="podman run --cpus (default: all cores)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="DFD_TORCH_THREADS (0: ceil of --cpus)"
    )
    parser.add_argument("--preprocess-workers", type=int, default=max(2, min(8, cpus)))
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-timeout-ms", type=float, default=None, help="(service default)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="DFD_NAME=VALUE",
        help="any other setting, given to every image alike (repeatable)",
    )
    parser.add_argument("--frames", type=int, default=32, help="distinct frames (frames load)")
    parser.add_argument("--warm-up", type=int, default=32, help="requests before the levels")
    parser.add_argument("--level-time-limit", type=float, default=120.0, help="seconds per level")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds per start")
    parser.add_argument(
        "--together",
        action="store_true",
        help="drive both images at the same time in each round (both started, then loaded at "
        "once: on a machine shared with other jobs both see the same load at the same moment; "
        "each gets about half the cores), instead of one after the other",
    )
    parser.add_argument(
        "--window-s",
        type=float,
        default=15.0,
        help="with --together: each level runs this long on both images (no request count), so "
        "that neither gets the machine to itself after the other finished",
    )
    parser.add_argument("--podman", default="podman", help="the podman binary")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "containers")
    args = parser.parse_args(argv)
    if len(args.images) != 2:
        parser.error("--images takes exactly two images (the ratio is the first / the second)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def image_label(image: str) -> str:
    """``localhost/dfd-api:cpu`` -> ``cpu`` (the tag; the whole name when it has none)."""
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else name


def round_order(images: Sequence[str], index: int) -> list[str]:
    """The images in round ``index`` (0-based): as given, reversed every other round, so that
    each image goes first as often as the other (a, b, b, a, a, b, ...)."""
    order = list(images)
    return order[::-1] if index % 2 else order


def container_env(args: argparse.Namespace, port: int, face_crop: str) -> dict[str, str]:
    """The ``DFD_*`` settings every image gets alike (only the port differs between starts)."""
    threads = args.threads or max(1, int(-(-args.cpus // 1)))
    env = {
        "DFD_ENV": "development",
        "DFD_API_KEYS": API_KEY,
        "DFD_PORT": str(port),
        "DFD_HOST": "127.0.0.1",
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_WORKERS": "1",
        "DFD_BACKEND": args.backend,
        "DFD_DEVICE": "cpu",
        "DFD_CACHE": "off",
        "DFD_FACE_CROP": face_crop,
        "DFD_TORCH_THREADS": str(threads),
        "DFD_PREPROCESS_WORKERS": str(args.preprocess_workers),
        "DFD_MAX_BATCH_SIZE": str(args.max_batch_size),
    }
    if args.batch_timeout_ms is not None:
        env["DFD_BATCH_TIMEOUT_MS"] = str(args.batch_timeout_ms)
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not name.startswith("DFD_") or not sep:
            raise SystemExit(f"--server-env takes DFD_NAME=VALUE, not {item!r}")
        env[name] = value
    return env


def podman_command(
    podman: str, image: str, name: str, env: dict[str, str], cpus: float
) -> list[str]:
    """``podman run`` in the foreground (its output is the server's log), as the container check
    runs the images: host network, read-only root, the data folder on a tmpfs."""
    command = [
        podman,
        "run",
        "--name",
        name,
        "--network=host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/app/data:rw,U",
        "--health-interval=disable",
        f"--cpus={cpus:g}",
    ]
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    return [*command, image]


class ContainerServer(ServerProcess):
    """An image run by ``podman run`` (foreground); :attr:`pid` is the service's host PID (the
    container's PID 1), for its CPU time and RSS."""

    def __init__(
        self,
        name: str,
        podman: str,
        image: str,
        env: dict[str, str],
        cpus: float,
        log_dir: Path,
    ) -> None:
        self.podman = podman
        self.container = f"{name}-{os.getpid()}"
        command = podman_command(podman, image, self.container, env, cpus)
        super().__init__(name, command, {"DFD_PORT": env["DFD_PORT"]}, log_dir)
        self._service_pid: int | None = None

    @property
    def pid(self) -> int:
        if self._service_pid is None:
            out = subprocess.run(
                [self.podman, "inspect", "--format", "{{.State.Pid}}", self.container],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
            self._service_pid = int(out)
        return self._service_pid

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM through ``podman stop`` (the service drains), then remove the container (also
        when the stop is interrupted, e.g. by a signal that ends the benchmark)."""
        try:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [self.podman, "stop", "-t", str(int(timeout_s)), self.container],
                    capture_output=True,
                    timeout=timeout_s + 30,
                )
            super().stop(timeout_s)
        finally:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [self.podman, "rm", "-f", self.container], capture_output=True, timeout=60
                )
            self._service_pid = None


def drive(
    servers: Sequence[ServerProcess],
    payloads: Sequence[list[bytes]],
    concurrency: int,
    requests: int,
    args: Any,
    time_limit_s: float | None = None,
) -> list[dict[str, Any]]:
    """One level on each server, all at once (one server: the plain case): per server the load
    generator's summary, the service's CPU per answer, the machine's other CPU use, the load
    average and the service's stage means from /metrics."""
    time_limit_s = time_limit_s or args.level_time_limit
    before = [server.scrape_histograms() for server in servers]
    cpu_before = [process_cpu_s(server.pid) for server in servers]
    busy = machine_busy_s()

    async def levels() -> list[LevelResult]:
        return list(
            await asyncio.gather(
                *(
                    run_level(
                        server.port,
                        server_payloads,
                        concurrency,
                        requests,
                        time_limit_s,
                        args.client_timeout,
                    )
                    for server, server_payloads in zip(servers, payloads, strict=True)
                )
            )
        )

    results = asyncio.run(levels())
    for server in servers:
        server.check_alive()
    server_cpu = [process_cpu_s(s.pid) - c for s, c in zip(servers, cpu_before, strict=True)]
    busy = machine_busy_s() - busy
    # one client process drives them all: its CPU time is counted once
    client_cpu = max(result.client_cpu_s for result in results)
    summaries = []
    for server, result, cpu, earlier in zip(servers, results, server_cpu, before, strict=True):
        after = server.scrape_histograms()
        summary = result.summary()
        wall = max(result.wall_s, 1e-9)
        ok = summary["ok"]
        summary["server_cpu_pct"] = round(100 * cpu / wall, 1)
        summary["server_cpu_ms_per_ok"] = round(1000 * cpu / ok, 2) if ok else None
        summary["other_cpu_pct"] = round(
            max(0.0, 100 * (busy - sum(server_cpu) - client_cpu) / wall), 1
        )
        summary["load_avg_1m"] = load_average()
        summary["rss_mb"] = round(rss_mb(server.pid), 1)
        for key, family in STAGES.items():
            described = describe_histogram(
                histogram_delta(earlier.get(family), after.get(family, {})), 1000.0
            )
            summary[key] = described.get("mean")
        summaries.append(summary)
    return summaries


def run_images(
    images: Sequence[str],
    workload: str,
    args: argparse.Namespace,
    frames: dict[str, list[bytes]],
    round_index: int,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Start ``images`` for ``workload`` (one after the other, each waited for), warm each, drive
    every level on all of them at once, stop them. ``{image label: {concurrency: summary}}``."""
    servers: list[ContainerServer] = []
    ready: list[float] = []
    levels: dict[str, dict[int, dict[str, Any]]] = {image_label(i): {} for i in images}
    try:
        for image in images:
            port = free_port()
            name = f"dfd-bench-{image_label(image)}-{workload}-{round_index + 1}"
            env = container_env(args, port, WORKLOADS[workload])
            server = ContainerServer(name, args.podman, image, env, args.cpus, args.out / "logs")
            servers.append(server)
            ready.append(server.start(args.ready_timeout, attempts=1))
        payloads = [build_payloads(s.port, API_KEY, frames[workload]) for s in servers]
        for server, server_payloads in zip(servers, payloads, strict=True):
            asyncio.run(
                run_level(
                    server.port,
                    server_payloads,
                    4,
                    args.warm_up,
                    args.level_time_limit,
                    args.client_timeout,
                )
            )
        for concurrency in args.concurrency:
            if len(servers) > 1:  # together: the same window for all, whatever the rate
                summaries = drive(servers, payloads, concurrency, 10**9, args, args.window_s)
            else:
                summaries = drive(servers, payloads, concurrency, args.requests, args)
            for image, ready_s, summary in zip(images, ready, summaries, strict=True):
                summary["ready_s"] = round(ready_s, 2)
                levels[image_label(image)][concurrency] = summary
                print(
                    f"  round {round_index + 1} {image_label(image):<6} {workload:<7} "
                    f"c={concurrency:<4} {summary['throughput_rps']:7.1f} req/s  "
                    f"p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  "
                    f"cpu/ok {summary['server_cpu_ms_per_ok']} ms  "
                    f"forward {summary['forward_ms']} ms  RSS {summary['rss_mb']} MB  "
                    f"load {summary['load_avg_1m']}  {summary['statuses']}",
                    flush=True,
                )
    finally:
        stop_all(servers)
    return levels


def stop_all(servers: Sequence[ServerProcess]) -> None:
    """Stop every server, even when stopping one raises (a second signal): the first error is
    raised once all were tried."""
    error: BaseException | None = None
    for server in servers:
        try:
            server.stop()
        except BaseException as exc:  # re-raised below, once every server was tried
            error = error or exc
    if error is not None:
        raise error


Rounds = list[dict[str, dict[str, dict[int, dict[str, Any]]]]]
"""rounds[i][workload][image label][concurrency] -> one level's summary."""


def summarise(rounds: Rounds, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per workload and level: each image's medians over the rounds, the ratio of the median
    throughputs (first / second image) and the per-round ratios."""
    first, second = labels
    rows: list[dict[str, Any]] = []
    workloads = list(dict.fromkeys(w for r in rounds for w in r))
    for workload in workloads:
        levels = list(dict.fromkeys(c for r in rounds for c in r[workload][first]))
        for concurrency in levels:
            row: dict[str, Any] = {"workload": workload, "concurrency": concurrency}
            for label in labels:
                runs = [r[workload][label][concurrency] for r in rounds]
                for metric in ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_ok"):
                    values = [run[metric] for run in runs if run.get(metric) is not None]
                    row[f"{label}_{metric}"] = (
                        round(statistics.median(values), 2) if values else None
                    )
                row[f"{label}_rounds_rps"] = [run["throughput_rps"] for run in runs]
                row[f"{label}_non_200"] = sum(
                    n for run in runs for s, n in run["statuses"].items() if s != "200"
                )
            base = row[f"{second}_throughput_rps"]
            row["ratio"] = round(row[f"{first}_throughput_rps"] / base, 3) if base else None
            row["round_ratios"] = [
                round(a / b, 3) if b else None
                for a, b in zip(
                    row[f"{first}_rounds_rps"], row[f"{second}_rounds_rps"], strict=True
                )
            ]
            row["load_avg_1m"] = [
                max(r[workload][label][concurrency]["load_avg_1m"] for label in labels)
                for r in rounds
            ]
            row["target_met"] = row["ratio"] is not None and row["ratio"] >= 1.0
            rows.append(row)
    return rows


def rounds_table(rounds: Rounds, orders: list[list[str]], labels: Sequence[str]) -> str:
    """One line per round, workload and level: each image's throughput, p50/p99 and load."""
    first, second = labels
    lines = [
        f"| round (order) | workload | c | {first} req/s | {second} req/s | {first}/{second} "
        f"| p50 / p99 ms {first} | p50 / p99 ms {second} | load 1m {first} / {second} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, (run, order) in enumerate(zip(rounds, orders, strict=True)):
        for workload, by_label in run.items():
            for concurrency in by_label[first]:
                a, b = by_label[first][concurrency], by_label[second][concurrency]
                ratio = a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else 0
                lines.append(
                    f"| {index + 1} ({', '.join(order)}) | {workload} | {concurrency} | "
                    f"{a['throughput_rps']} | {b['throughput_rps']} | {ratio:.3f} | "
                    f"{a['p50_ms']} / {a['p99_ms']} | {b['p50_ms']} / {b['p99_ms']} | "
                    f"{a['load_avg_1m']} / {b['load_avg_1m']} |"
                )
    return "\n".join(lines)


def medians_table(rows: list[dict[str, Any]], labels: Sequence[str]) -> str:
    first, second = labels
    lines = [
        f"| workload | c | {first} req/s | {second} req/s | {first}/{second} (per round) "
        f"| p50 ms {first} / {second} | p99 ms {first} / {second} "
        f"| server CPU ms per answer {first} / {second} | non-200 {first} / {second} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        per_round = ", ".join(f"{r:.2f}" if r is not None else "-" for r in row["round_ratios"])
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | {row[f'{first}_throughput_rps']} | "
            f"{row[f'{second}_throughput_rps']} | {row['ratio']} ({per_round}) | "
            f"{row[f'{first}_p50_ms']} / {row[f'{second}_p50_ms']} | "
            f"{row[f'{first}_p99_ms']} / {row[f'{second}_p99_ms']} | "
            f"{row[f'{first}_server_cpu_ms_per_ok']} / {row[f'{second}_server_cpu_ms_per_ok']} | "
            f"{row[f'{first}_non_200']} / {row[f'{second}_non_200']} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """The ratio of medians against the target, and in how many rounds the first image was at
    least as fast (on a shared machine a ratio near 1 flips with the noise: read both)."""
    first, second = labels
    lines = []
    for row in rows:
        ratios = [r for r in row["round_ratios"] if r is not None]
        ahead = sum(r >= 1.0 for r in ratios)
        lines.append(
            f"{row['workload']} c={row['concurrency']}: {first} / {second} throughput "
            f"{row['ratio']} (target >= 1: {'met' if row['target_met'] else 'NOT met'}; "
            f"{first} at least as fast in {ahead} of {len(ratios)} rounds: "
            f"{', '.join(f'{r:.2f}' for r in ratios)})"
        )
    return lines


def payloads_by_workload(workloads: Sequence[str], frame_count: int) -> dict[str, list[bytes]]:
    examples = REPO_ROOT / "examples"
    frames: dict[str, list[bytes]] = {}
    if "frames" in workloads:
        frames["frames"] = load_frames(examples, count=frame_count)
    if "faces" in workloads:
        photos = sorted(examples.glob("*.jpg"))
        if not photos:
            raise SystemExit(f"no example photos in {examples} for the faces workload")
        frames["faces"] = [path.read_bytes() for path in photos]
    return frames


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    labels = [image_label(image) for image in args.images]
    if len(set(labels)) != 2:
        raise SystemExit(f"the two images need different tags, not {labels}")
    for image in args.images:
        found = subprocess.run(
            [args.podman, "image", "exists", image], capture_output=True, timeout=60
        )
        if found.returncode != 0:
            raise SystemExit(f"image {image} not found (build it: scripts/container_check.sh)")
    args.out.mkdir(parents=True, exist_ok=True)
    frames = payloads_by_workload(args.workloads, args.frames)
    env_shown = container_env(args, 0, "<per workload>")
    env_shown.pop("DFD_PORT")
    mode = "rounds, both images loaded at once," if args.together else "interleaved rounds"
    print(
        f"{args.rounds} {mode} of {' vs '.join(args.images)}, --cpus={args.cpus:g}, "
        f"workloads {', '.join(args.workloads)}, c={','.join(map(str, args.concurrency))}, "
        + (
            f"{args.window_s:g} s per level on both at once"
            if args.together
            else f"{args.requests} requests per level"
        )
        + "; every image runs with "
        + " ".join(f"{k}={v}" for k, v in env_shown.items()),
        flush=True,
    )
    started = time.time()
    rounds: Rounds = []
    orders: list[list[str]] = []
    for index in range(args.rounds):
        order = round_order(args.images, index)
        labels_in_order = [image_label(image) for image in order]
        orders.append(
            [" + ".join(labels_in_order) + " at once"] if args.together else labels_in_order
        )
        run: dict[str, dict[str, dict[int, dict[str, Any]]]] = {w: {} for w in args.workloads}
        if args.together:
            for workload in args.workloads:
                run[workload] = run_images(order, workload, args, frames, index)
        else:
            for image in order:
                for workload in args.workloads:
                    run[workload].update(run_images([image], workload, args, frames, index))
        rounds.append(run)
    rows = summarise(rounds, labels)
    per_round = rounds_table(rounds, orders, labels)
    medians = medians_table(rows, labels)
    lines = verdicts(rows, labels)
    print("\nper round\n" + per_round + "\n\nmedians over the rounds\n" + medians + "\n")
    print("\n".join(lines))
    write_json(
        {
            "images": args.images,
            "settings": {
                **env_shown,
                "cpus": args.cpus,
                "requests": args.requests,
                "together": args.together,
            },
            "orders": orders,
            "rounds": rounds,
            "medians": rows,
            "seconds": round(time.time() - started, 1),
        },
        args.out / "containers.json",
    )
    (args.out / "containers.md").write_text(
        per_round + "\n\n" + medians + "\n\n" + "\n".join(lines) + "\n"
    )
    print(f"\nwritten: {args.out / 'containers.json'}, {args.out / 'containers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
