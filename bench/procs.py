"""Server subprocesses (the service and the naive baseline), the service's settings as flags and
``DFD_*`` variables, probes, and /proc readings. Nothing here imports torch (``bench.hostile``
uses it as a light client)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import LOOPBACK
from src.core.settings import Settings

API_KEY = "bench-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICE_HISTOGRAMS = (
    "dfd_preprocess_seconds",
    "dfd_queue_wait_seconds",
    "dfd_model_inference_seconds",
    "dfd_batch_size",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc/PID/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class ServerProcess:
    """A server started with ``command`` and ``env``; always stopped by :meth:`stop`."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.command = command
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = int(env.get("DFD_PORT") or env.get("BENCH_PORT") or 0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, ready_timeout_s: float, attempts: int = 2) -> float:
        """Start the server and wait until GET /ready answers 200; returns seconds it took.

        A server killed by a signal before it was ready (on a shared machine, someone else's
        clean-up) is started once more.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(ready_timeout_s)
            except RuntimeError:
                killed = self.process is not None and (self.process.returncode or 0) < 0
                if not killed or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, ready_timeout_s: float) -> float:
        log = self.log_path.open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = started + ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}; see {self.log_path}:"
                        f"\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/ready").status_code == 200:
                        return time.perf_counter() - started
                time.sleep(0.25)
        raise RuntimeError(
            f"{self.name} not ready within {ready_timeout_s:g} s; see {self.log_path}"
        )

    def check_alive(self) -> None:
        """Raise if the server has exited (crashed, or was signalled by someone else)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with {self.process.returncode} during the "
                f"run; see {self.log_path}:\n{self.log_tail(5)}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def scrape_histograms(self) -> dict[str, Any]:
        """The service's stage histograms from /metrics: ``{name: {buckets, sum, count}}``."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5.0).text
        found: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            if family.name not in SERVICE_HISTOGRAMS:
                continue
            entry: dict[str, Any] = {"buckets": {}, "sum": 0.0, "count": 0.0}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    entry["buckets"][float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
            found[family.name] = entry
        return found


@contextlib.contextmanager
def running(server: ServerProcess, ready_timeout_s: float) -> Iterator[ServerProcess]:
    try:
        server.start(ready_timeout_s)
        yield server
    finally:
        server.stop()


def service_command() -> list[str]:
    return [sys.executable, "-m", "src.serve"]


def naive_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.naive_server:app",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


# The service under test: its settings as flags and as DFD_* variables.


def setting_default(name: str) -> Any:
    """The service's default for setting ``name``."""
    return Settings.model_fields[name].default


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's settings as flags (also used by ``python -m bench.hostile``)."""
    cpus = os.cpu_count() or 1
    group = parser.add_argument_group("service settings (passed as DFD_* variables)")
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=setting_default("max_batch_size") or 4,
        help="(CPU default 4)",
    )
    group.add_argument(
        "--batch-timeout-ms", type=float, default=setting_default("batch_timeout_ms")
    )
    group.add_argument("--max-queue-size", type=int, default=setting_default("max_queue_size"))
    group.add_argument(
        "--torch-threads", type=int, default=cpus, help="also used for the raw model and naive"
    )
    group.add_argument(
        "--preprocess-workers", type=int, default=max(2, min(8, cpus)), help="service default"
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda or auto (all three runs)")
    group.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="DFD_NAME=VALUE",
        help="any other setting for the service (repeatable)",
    )


def service_env(args: argparse.Namespace, checkpoint: Path, port: int, queue: int) -> dict:
    env = {
        "DFD_ENV": "development",
        "DFD_CHECKPOINT_PATH": str(checkpoint),
        "DFD_API_KEYS": API_KEY,
        "DFD_HOST": "127.0.0.1",
        "DFD_PORT": str(port),
        "DFD_WORKERS": "1",
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_DEVICE": args.device,
        "DFD_FACE_CROP": "off",
        # The load tests cycle a few frames: with the result cache on, all but the first pass
        # would be cache hits and the model would go unmeasured (bench.store measures the cache).
        "DFD_CACHE": "off",
        "DFD_MAX_BATCH_SIZE": str(args.max_batch_size),
        "DFD_BATCH_TIMEOUT_MS": str(args.batch_timeout_ms),
        "DFD_MAX_QUEUE_SIZE": str(queue),
        "DFD_TORCH_THREADS": str(args.torch_threads),
        "DFD_PREPROCESS_WORKERS": str(args.preprocess_workers),
    }
    for item in args.server_env:
        name, _, value = item.partition("=")
        if not name.startswith("DFD_"):
            raise SystemExit(f"--server-env takes DFD_NAME=VALUE, not {item!r}")
        env[name] = value
    return env


def clean_environ() -> None:
    """Settings from the caller's shell must not leak into the servers."""
    for name in list(os.environ):
        if name.startswith(("DFD_", "BENCH_")) or name == "MODEL_API_KEY":
            del os.environ[name]


def stop_on_signals() -> None:
    """SIGTERM and SIGINT (even when the shell ignored it) unwind, so every server is stopped."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread, keeping the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
