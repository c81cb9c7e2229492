"""Attacks on the real server, bounded in time and count, loopback only: slow uploads, SIGTERM
while uploads trickle, and a burst of decode bombs."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers.api import TEST_KEY
from tests.helpers.images import image_bytes
from tests.helpers.server import served

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def server(checkpoint: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    # The same hostile payloads are sent again and again: with the result cache on, repeats
    # would be answered from it and never reach the decoder these tests load.
    with served(checkpoint, **{"DFD_CACHE": "off", **settings}) as (base, _, process):
        yield base, process


class SlowUpload:
    """A raw-socket upload whose body trickles in one byte per ``interval_s``."""

    def __init__(self, port: int, declared: int = 5000, interval_s: float = 0.25) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (
            f"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {TEST_KEY}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + b"\xff\xd8")
        self.interval_s = interval_s
        self.response = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(self.interval_s)
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.response += chunk
                if b"\r\n\r\n" in self.response:
                    return
            except TimeoutError:
                with contextlib.suppress(OSError):
                    self.sock.sendall(b"\x00")
            except OSError:
                return

    def status(self, timeout: float) -> int:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        head = self.response.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 else 0

    def header(self, name: str) -> str | None:
        for line in self.response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def post_frame(base: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(
        f"{base}/infer",
        content=image_bytes(),
        headers={"X-API-Key": TEST_KEY, "Content-Type": "image/jpeg"},
        timeout=30,
    )
    return response.status_code, time.perf_counter() - started


def test_slow_uploads_do_not_starve_normal_clients(checkpoint_path: Path) -> None:
    with server(
        checkpoint_path,
        DFD_MAX_CONCURRENT_UPLOADS="8",
        DFD_MAX_QUEUE_SIZE="4",
        DFD_BODY_TIMEOUT_S="2",
        DFD_LOG_LEVEL="WARNING",
    ) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        slow = [SlowUpload(port) for _ in range(12)]
        time.sleep(1.2)  # past the eviction grace: each normal upload evicts a trickling one
        normal = [post_frame(base) for _ in range(5)]
        statuses = sorted(s.status(timeout=10) for s in slow)
        assert [status for status, _ in normal] == [200] * 5
        assert max(seconds for _, seconds in normal) < 1.5, normal
        assert statuses == [408] * 8 + [503] * 4, statuses
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200


def test_sigterm_ends_trickling_uploads_as_503_without_a_traceback(checkpoint_path: Path) -> None:
    with server(checkpoint_path, DFD_BODY_TIMEOUT_S="60", DFD_DRAIN_TIMEOUT_S="3") as (
        base,
        process,
    ):
        port = int(base.rsplit(":", 1)[1])
        slow = [SlowUpload(port) for _ in range(2)]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        statuses = [s.status(timeout=10) for s in slow]
        exit_code = process.wait(timeout=20)
        output = process.stdout.read() if process.stdout else ""
    assert statuses == [503, 503], output
    assert all(s.header("retry-after") == "1" for s in slow)
    assert exit_code == 0, output
    assert "Traceback" not in output and "CancelledError" not in output, output
    access = [json.loads(line) for line in output.splitlines() if '"src.access"' in line]
    assert [a["status"] for a in access if a["path"] == "/infer"] == [503, 503]


def post_image(base: str, data: bytes, content_type: str) -> int:
    headers = {"X-API-Key": TEST_KEY, "Content-Type": content_type}
    return httpx.post(f"{base}/infer", content=data, headers=headers, timeout=60).status_code


def webp_bomb(width: int, height: int) -> bytes:
    """A tiny file that declares ``width`` x ``height`` pixels of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_burst_of_decode_bombs_stays_in_a_memory_bound_and_gives_it_back(
    checkpoint_path: Path,
) -> None:
    bomb = webp_bomb(4000, 3000)  # 12 MP declared, a few KB on the wire
    assert len(bomb) < 20_000
    with server(
        checkpoint_path,
        DFD_MAX_IMAGE_PIXELS="12000000",
        DFD_PREPROCESS_WORKERS="4",
        DFD_LOG_LEVEL="WARNING",
    ) as (base, process):
        # Warm every decoding thread's heap with ordinary frames and one large image first, so the
        # comparison below measures what the burst keeps, not first-use growth.
        assert [post_frame(base)[0] for _ in range(4)] == [200] * 4
        assert post_image(base, bomb, "image/webp") == 200
        time.sleep(0.5)
        pid = process.pid
        baseline = rss_mb(pid)
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.02):
                with contextlib.suppress(OSError, AssertionError):
                    peak = max(peak, rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def post_bomb(_: int) -> int:
            return post_image(base, bomb, "image/webp")

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=12) as pool:
            bombs = pool.map(post_bomb, range(12))
            normal = [post_frame(base) for _ in range(3)]
            bomb_statuses = list(bombs)
        time.sleep(1.0)
        stop.set()
        sampler.join(2)
        after = rss_mb(pid)
    # One decodes, four budgets' worth wait, the rest are refused at once (503 + Retry-After).
    assert set(bomb_statuses) <= {200, 503} and 2 <= bomb_statuses.count(200) <= 8, bomb_statuses
    assert [status for status, _ in normal] == [200] * 3
    # One 12 MP decode at a time: RGBA decode + RGB copy + resize, well under 400 MB.
    assert peak - baseline < 400, f"RSS {baseline:.0f} -> peak {peak:.0f} MB"
    assert after - baseline < 100, f"RSS {baseline:.0f} -> {after:.0f} MB after the burst"
