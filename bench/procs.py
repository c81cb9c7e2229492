"""Server subprocesses (the service and the naive baseline), probes, and /proc readings."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import LOOPBACK

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
