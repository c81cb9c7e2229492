"""A real ``python -m src.serve`` process on a free loopback port, for the integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers import REPO_ROOT
from tests.helpers.api import TEST_KEY

# Each started server's own data folder, by pid, for stop_server to remove.
_DATA_DIRS: dict[int, Path] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(checkpoint: Path | None, port: int, **settings: str) -> subprocess.Popen[str]:
    """Start the server with a clean ``DFD_*`` environment plus ``settings`` (``DFD_X="1"``);
    ``checkpoint`` None: a model repository (``DFD_MODEL_REPOSITORY`` in ``settings``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFD_")}
    # The store's files go to a folder of this server's (removed by stop_server), never to the
    # repository's data/; a test sharing a database between servers sets DFD_DATABASE_URL.
    data = Path(tempfile.mkdtemp(prefix="dfd-server-"))
    if checkpoint is not None:
        env["DFD_CHECKPOINT_PATH"] = str(checkpoint)
    env.update(
        DFD_API_KEYS=TEST_KEY,
        DFD_TORCH_THREADS="1",
        DFD_LOG_FORMAT="json",
        DFD_DATABASE_URL=f"sqlite:///{data / 'store.db'}",
        DFD_SPOOL_PATH=str(data / "spool" / "results.jsonl"),
        DFD_JOBS_DIR=str(data / "jobs"),
        DFD_RECORD_DIR=str(data / "recordings"),
    )
    env.update(settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "src.serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _DATA_DIRS[process.pid] = data
    return process


def wait_ready(base: str, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited early:\n{process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


def stop_server(process: subprocess.Popen[str], timeout: float = 20) -> None:
    """SIGTERM (so the server exits as in production and writes its coverage data), then kill
    if it has not exited within ``timeout``."""
    try:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    finally:
        data = _DATA_DIRS.pop(process.pid, None)
        if data is not None and process.poll() is not None:
            shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def served(
    checkpoint: Path | None, **settings: str
) -> Iterator[tuple[str, int, subprocess.Popen[str]]]:
    """``(base URL, port, process)`` of a server started as :func:`start_server` starts it on a
    free port, ready; stopped (and its output pipe closed) when the block ends."""
    port = free_port()
    process = start_server(checkpoint, port, **settings)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process)
        yield base, port, process
    finally:
        stop_server(process)
        if process.stdout is not None:
            process.stdout.close()
