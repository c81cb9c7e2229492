"""``python -m bench --checkpoint PATH``: load-test the service on each backend against the raw
model and a naive baseline, then the face-crop path on the demo model, and check the issue's
targets. Not part of CI; see bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.frames import load_frames
from bench.loadgen import build_payloads, run_level
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    RssSampler,
    ServerProcess,
    add_service_arguments,
    clean_environ,
    free_port,
    load_average,
    machine_busy_s,
    naive_command,
    process_cpu_s,
    rss_mb,
    running,
    service_command,
    service_env,
    stop_on_signals,
)
from bench.raw_model import SCORE_BACKENDS, int8_path
from bench.report import (
    FAIL,
    evaluate_targets,
    feasibility,
    feasibility_table,
    plot,
    raw_backends_table,
    raw_table,
    results_table,
    targets_table,
    write_json,
)
from bench.stats import LevelResult, describe_histogram, histogram_delta, summarize
from src.core.settings import DEFAULT_CHECKPOINT
from src.models import read_checkpoint

BACKENDS = ("torch", "onnxruntime")
INT8 = "onnxruntime-int8"
DEMO_CHECKPOINT = REPO_ROOT / DEFAULT_CHECKPOINT

STAGES = {
    "preprocess_ms": ("dfd_preprocess_seconds", 1000.0),
    "queue_wait_ms": ("dfd_queue_wait_seconds", 1000.0),
    "forward_ms": ("dfd_model_inference_seconds", 1000.0),
    "batch_size": ("dfd_batch_size", 1.0),
}


def _backend_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in BACKENDS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"expected backends from {','.join(BACKENDS)}, not {text!r}"
        )
    return list(dict.fromkeys(values))


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32, not {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the service (python -m src.serve) against the raw model and a "
        "naive baseline over loopback, then check the targets. Writes results.json, results.md "
        "and results.png to --out.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a dfd checkpoint (.pt)")
    parser.add_argument("--requests", type=int, default=300, help="requests per level")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 32, 128])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    add_service_arguments(parser)
    parser.add_argument(
        "--small-queue",
        type=int,
        default=16,
        help="DFD_MAX_QUEUE_SIZE for the overload run at the highest concurrency (0: skip)",
    )
    parser.add_argument("--soak", type=int, default=0, help="requests in a row for the soak run")
    parser.add_argument("--soak-concurrency", type=int, default=8)
    parser.add_argument("--soak-time-limit", type=float, default=1800.0, help="seconds")
    parser.add_argument("--raw-batches", type=_int_list, default=[1, 2, 4, 8, 16])
    parser.add_argument("--raw-budget-s", type=float, default=4.0, help="timed s per batch size")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument(
        "--backends",
        type=_backend_list,
        default=list(BACKENDS),
        help="DFD_BACKEND values to time raw (Backend.score) and to serve, in order (default: "
        "torch,onnxruntime); the first one also runs the soak and the overload run. The int8 "
        "export is timed raw when model.int8.onnx exists beside the checkpoint",
    )
    parser.add_argument(
        "--raw-backends",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time Backend.score per backend (the torch forward-pass timing always runs)",
    )
    parser.add_argument(
        "--face-crop-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve --face-checkpoint with face crop on the example face photos, per backend",
    )
    parser.add_argument("--face-checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument(
        "--face-crop-mode",
        choices=("auto", "on"),
        default="auto",
        help="DFD_FACE_CROP for the face run (auto: the checkpoint's own setting, which is on "
        "for the demo model; on is forced when the checkpoint says off)",
    )
    parser.add_argument("--face-concurrency", type=_int_list, default=[1, 32])
    parser.add_argument(
        "--face-reference-rps",
        type=float,
        default=None,
        help="req/s of the face path at c=32 before this work (for the 2x target); default: "
        "the torch backend's face run in this same run",
    )
    parser.add_argument(
        "--service-command",
        default=" ".join(service_command()),
        help="for experiments: the command that starts the service (default: python -m src.serve)",
    )
    parser.add_argument("--frames", type=int, default=32, help="distinct JPEG frames to send")
    parser.add_argument("--level-time-limit", type=float, default=120.0, help="seconds per level")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds per server")
    return parser.parse_args(argv)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure_raw(
    args: argparse.Namespace, checkpoint: Path, backend: str = "forward"
) -> dict[str, Any]:
    """The forward pass (or ``Backend.score`` of ``backend``) alone, in its own process, before
    any server runs."""
    batches = sorted({*args.raw_batches, args.max_batch_size})
    command = [
        sys.executable,
        "-m",
        "bench.raw_model",
        "--checkpoint",
        str(checkpoint),
        "--threads",
        str(args.torch_threads),
        "--device",
        args.device,
        "--batches",
        ",".join(map(str, batches)),
        "--budget-s",
        str(args.raw_budget_s),
        "--backend",
        backend,
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"raw model timing failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def service_process(
    args: argparse.Namespace,
    checkpoint: Path,
    name: str,
    queue: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """The service under test (``--service-command``) on a free loopback port; ``extra_env``
    (the backend, face crop) wins over ``--server-env``."""
    env = {**service_env(args, checkpoint, free_port(), queue), **(extra_env or {})}
    return ServerProcess(name, shlex.split(args.service_command), env, log_dir)


def ensure_export(checkpoint: Path) -> str:
    """Export ``checkpoint`` to ONNX beside it unless a matching export is there; what was done."""
    from src.core.errors import CheckpointError
    from src.export import export_onnx
    from src.models.backends.onnxruntime import check_export

    try:
        check_export(checkpoint)
        return "export present"
    except CheckpointError as exc:
        print(f"exporting {checkpoint} to ONNX ({exc.message})", flush=True)
    started = time.perf_counter()
    export_onnx(checkpoint)
    return f"exported in {time.perf_counter() - started:.1f} s"


def raw_backends(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    """``Backend.score`` timing per backend, and for the int8 export when there is one."""
    names = [name for name in SCORE_BACKENDS if name in args.backends]
    if "onnxruntime" in args.backends:
        names.append(INT8)
    found: dict[str, Any] = {}
    for name in names:
        if name == INT8 and not int8_path(checkpoint).is_file():
            found[name] = {"skipped": f"no {int8_path(checkpoint).name} beside the checkpoint"}
        else:
            try:
                found[name] = measure_raw(args, checkpoint, name)
            except RuntimeError as exc:
                found[name] = {"skipped": str(exc).splitlines()[-1][:200]}
        print(f"  raw {name}: {_raw_line(found[name])}", flush=True)
    return found


def _raw_line(raw: dict[str, Any]) -> str:
    if "skipped" in raw:
        return f"skipped ({raw['skipped']})"
    best, batch1 = raw["best"], raw["batch1"]
    one = f"batch 1 {batch1['median_ms']:.1f} ms, " if batch1 else ""
    return f"{one}best {best['throughput_ips']:.1f} img/s at batch {best['batch']}"


def _stage_summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    stages = {}
    for label, (metric, scale) in STAGES.items():
        delta = histogram_delta(before.get(metric), after.get(metric, {}))
        stages[label] = describe_histogram(delta, scale)
    return stages


def drive(
    server: ServerProcess,
    payloads: list[bytes],
    concurrency: int,
    requests: int,
    args: argparse.Namespace,
    *,
    time_limit_s: float | None = None,
    scrape: bool = True,
    retry_after_cap_s: float = 0.0,
) -> tuple[LevelResult, dict[str, Any]]:
    """One level: the load itself plus the server's CPU, the machine's and the stage metrics."""
    before = server.scrape_histograms() if scrape else {}
    server_cpu, busy = process_cpu_s(server.pid), machine_busy_s()
    result = asyncio.run(
        run_level(
            server.port,
            payloads,
            concurrency,
            requests,
            time_limit_s or args.level_time_limit,
            args.client_timeout,
            retry_after_cap_s=retry_after_cap_s,
        )
    )
    server.check_alive()
    server_cpu = process_cpu_s(server.pid) - server_cpu
    busy = machine_busy_s() - busy
    summary = result.summary()
    wall = max(result.wall_s, 1e-9)
    summary["server_cpu_pct"] = round(100 * server_cpu / wall, 1)
    ok = summary.get("ok", 0)
    summary["server_cpu_ms_per_ok"] = round(1000 * server_cpu / ok, 2) if ok else None
    summary["client_cpu_pct"] = round(100 * result.client_cpu_s / wall, 1)
    summary["other_cpu_pct"] = round(
        max(0.0, 100 * (busy - server_cpu - result.client_cpu_s) / wall), 1
    )
    summary["load_avg_1m"] = load_average()
    if scrape:
        summary["stages"] = _stage_summary(before, server.scrape_histograms())
    return result, summary


def warm_up(server: ServerProcess, payloads: list[bytes], args: argparse.Namespace) -> None:
    drive(server, payloads, 4, 32, args, scrape=False)


def run_levels(
    server: ServerProcess,
    payloads: list[bytes],
    args: argparse.Namespace,
    *,
    scrape: bool,
    concurrency_levels: list[int] | None = None,
) -> list[dict[str, Any]]:
    levels = []
    for concurrency in concurrency_levels or args.concurrency:
        _, summary = drive(server, payloads, concurrency, args.requests, args, scrape=scrape)
        print(
            f"  {server.name:<18} c={concurrency:<4} {summary['throughput_rps']:7.1f} req/s  "
            f"p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  {summary['statuses']}",
            flush=True,
        )
        levels.append(summary)
    return levels


def run_small_queue(
    args: argparse.Namespace,
    checkpoint: Path,
    payloads_for: Any,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    concurrency = max(args.concurrency)
    server = service_process(
        args, checkpoint, "service-small-queue", args.small_queue, log_dir, extra_env
    )
    with running(server, args.ready_timeout):
        payloads = payloads_for(server.port)
        warm_up(server, payloads, args)
        rss_before = rss_mb(server.pid)
        with RssSampler(server.pid) as sampler:
            requests = max(args.requests, 8 * concurrency)
            _, summary = drive(server, payloads, concurrency, requests, args, retry_after_cap_s=1.0)
        rss_after = rss_mb(server.pid)
        print(
            f"  queue={args.small_queue} c={concurrency}: {summary['statuses']}  RSS "
            f"{rss_before:.0f} -> {rss_after:.0f} MB (peak {sampler.peak_mb:.0f})",
            flush=True,
        )
        return {
            "concurrency": concurrency,
            "backend": (extra_env or {}).get("DFD_BACKEND"),
            "max_queue_size": args.small_queue,
            "summary": summary,
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1),
            "rss_peak_mb": round(sampler.peak_mb, 1),
        }


def run_soak(server: ServerProcess, payloads: list[bytes], args: argparse.Namespace) -> dict:
    """``--soak`` requests in chunks, RSS read between chunks; growth counts from chunk one."""
    total, concurrency = args.soak, args.soak_concurrency
    chunk = max(100, min(1000, total // 10))
    deadline = time.perf_counter() + args.soak_time_limit
    latencies: list[float] = []
    statuses: list[str] = []
    wall = client_cpu = 0.0
    trace = [(0, round(rss_mb(server.pid), 1))]
    while len(statuses) < total and time.perf_counter() < deadline:
        count = min(chunk, total - len(statuses))
        remaining = deadline - time.perf_counter()
        result, _ = drive(
            server, payloads, concurrency, count, args, time_limit_s=remaining, scrape=False
        )
        latencies += result.latencies_s
        statuses += result.statuses
        wall += result.wall_s
        client_cpu += result.client_cpu_s
        trace.append((len(statuses), round(rss_mb(server.pid), 1)))
        print(f"  soak {len(statuses)}/{total}: RSS {trace[-1][1]:.0f} MB", flush=True)
    summary = summarize(concurrency, wall, latencies, statuses, client_cpu)
    after_warmup = trace[1][1] if len(trace) > 1 else trace[0][1]
    return {
        "concurrency": concurrency,
        "summary": summary,
        "warmup_requests": trace[1][0] if len(trace) > 1 else 0,
        "rss_trace": trace,
        "rss_after_warmup_mb": after_warmup,
        "rss_end_mb": trace[-1][1],
        "growth_mb": round(trace[-1][1] - after_warmup, 1),
    }


def face_payloads(port: int) -> tuple[list[bytes], list[str]]:
    """The example face photos themselves (``examples/*.jpg``), as requests to ``port``."""
    paths = sorted((REPO_ROOT / "examples").glob("*.jpg"))
    if not paths:
        raise RuntimeError("no examples/*.jpg for the face-crop run")
    return build_payloads(port, API_KEY, [p.read_bytes() for p in paths]), [p.name for p in paths]


def run_faces(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """The face-crop path: ``--face-checkpoint`` with face crop on, per backend, on the example
    face photos, at ``--face-concurrency``. A 422 (no face found) shows in the statuses."""
    checkpoint = args.face_checkpoint.resolve()
    metadata = read_checkpoint(checkpoint).metadata
    mode = args.face_crop_mode if metadata.face_crop or args.face_crop_mode == "on" else "on"
    found: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "face_crop": mode,
        "checkpoint_face_crop": metadata.face_crop,
        "runs": {},
    }
    if "onnxruntime" in args.backends:
        found["export"] = ensure_export(checkpoint)
    for backend in args.backends:
        env = {"DFD_BACKEND": backend, "DFD_FACE_CROP": mode}
        name = f"faces-{backend}"
        server = service_process(args, checkpoint, name, args.max_queue_size, log_dir, env)
        with running(server, args.ready_timeout):
            payloads, images = face_payloads(server.port)
            warm_up(server, payloads, args)
            levels = run_levels(
                server, payloads, args, scrape=True, concurrency_levels=args.face_concurrency
            )
        found["images"] = images
        found["runs"][backend] = {"backend": backend, "levels": levels}
        refused = sum(level["statuses"].get("422", 0) for level in levels)
        if refused:
            print(f"  WARNING: {name}: {refused} answers 422 (no face found?)", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    command_line = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    clean_environ()
    checkpoint = args.checkpoint.resolve()
    metadata = read_checkpoint(checkpoint).metadata
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(REPO_ROOT / "examples", count=args.frames)
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "command": command_line,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "checkpoint": str(checkpoint),
            "model_version": metadata.version,
            "frames": len(frames),
            "frame_kb_mean": round(sum(map(len, frames)) / len(frames) / 1024, 1),
            "load_avg_1m_start": load_average(),
            "note": "speed does not depend on the weights' values; a checkpoint with random "
            "weights measures the same as a trained one of the same architecture and size",
        },
        "settings": {
            "max_batch_size": args.max_batch_size,
            "batch_timeout_ms": args.batch_timeout_ms,
            "max_queue_size": args.max_queue_size,
            "torch_threads": args.torch_threads,
            "preprocess_workers": args.preprocess_workers,
            "device": args.device,
            "requests_per_level": args.requests,
            "concurrency": args.concurrency,
            "backends": args.backends,
            "face_crop_run": args.face_crop_run,
            "face_concurrency": args.face_concurrency,
            "face_reference_rps": args.face_reference_rps,
            "server_env": args.server_env,
            "service_command": args.service_command,
            "malloc_env": {
                k: v
                for k, v in os.environ.items()
                if k.startswith(("MALLOC_", "OMP_", "GOMP_", "GLIBC_"))
            },
        },
    }
    log_dir = out / "logs"

    def payloads_for(port: int) -> list[bytes]:
        return build_payloads(port, API_KEY, frames)

    print(
        f"raw model: {metadata.architecture} @ {metadata.input_size}, {args.torch_threads} threads",
        flush=True,
    )
    results["raw"] = measure_raw(args, checkpoint)
    print(raw_table(results["raw"]), flush=True)
    if "onnxruntime" in args.backends:
        results["meta"]["export"] = ensure_export(checkpoint)
    if args.raw_backends:
        results["raw_backends"] = raw_backends(args, checkpoint)

    results["services"] = {}
    for index, backend in enumerate(args.backends):
        env = {"DFD_BACKEND": backend}
        service = service_process(
            args, checkpoint, f"service-{backend}", args.max_queue_size, log_dir, env
        )
        with running(service, args.ready_timeout):
            payloads = payloads_for(service.port)
            warm_up(service, payloads, args)
            entry: dict[str, Any] = {
                "backend": backend,
                "rss_start_mb": round(rss_mb(service.pid), 1),
            }
            entry["levels"] = run_levels(service, payloads, args, scrape=True)
            entry["rss_end_mb"] = round(rss_mb(service.pid), 1)
            if args.soak and index == 0:
                results["soak"] = run_soak(service, payloads, args)
                results["soak"]["backend"] = backend
        results["services"][backend] = entry
        if args.small_queue and index == 0:
            results["small_queue"] = run_small_queue(args, checkpoint, payloads_for, log_dir, env)
    # Continuity: the existing targets compare "the service" with the raw torch model.
    primary = "torch" if "torch" in results["services"] else args.backends[0]
    results["service"] = results["services"][primary]

    if not args.no_naive:
        port = free_port()
        naive_env = {
            "BENCH_PORT": str(port),
            "BENCH_CHECKPOINT": str(checkpoint),
            "BENCH_API_KEY": API_KEY,
            "BENCH_THREADS": str(args.torch_threads),
            "BENCH_DEVICE": args.device,
        }
        naive = ServerProcess("naive", naive_command(port), naive_env, log_dir)
        with running(naive, args.ready_timeout):
            payloads = payloads_for(port)
            warm_up(naive, payloads, args)
            results["naive"] = {"levels": run_levels(naive, payloads, args, scrape=False)}

    if args.face_crop_run:
        results["faces"] = run_faces(args, log_dir)

    results["meta"]["duration_s"] = round(time.time() - started, 1)
    results["meta"]["load_avg_1m_end"] = load_average()
    results["targets"] = evaluate_targets(results)
    results["feasibility"] = feasibility(results)
    report = "\n\n".join(
        [
            "## Raw model (forward pass only)\n\n" + raw_table(results["raw"]),
            "## Raw backends (Backend.score on uint8 crops)\n\n"
            + raw_backends_table(results.get("raw_backends", {})),
            "## Over HTTP\n\n" + results_table(results),
            "## Targets\n\n" + targets_table(results["targets"]),
            "## What this machine allows\n\n" + feasibility_table(results["feasibility"]),
        ]
    )
    print("\n" + report)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(report + "\n")
    plot(results, out / "results.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return 1 if any(t["result"] == FAIL for t in results["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
