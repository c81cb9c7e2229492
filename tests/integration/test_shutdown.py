"""Graceful shutdown of the real server: SIGTERM while requests are in flight."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from src.models import ModelMetadata, build_model, save_checkpoint
from tests.helpers.api import TEST_KEY
from tests.helpers.images import image_bytes
from tests.helpers.server import free_port, start_server, wait_ready


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size network, so that a handful of requests keeps the server busy for a while."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0")
    meta = ModelMetadata(architecture="efficientnet_lite0", input_size=224, version="drain-test")
    return save_checkpoint(tmp_path_factory.mktemp("slow") / "model.pt", model.state_dict(), meta)


def infer_counts(base: str) -> tuple[float, float]:
    """(/infer requests finished, requests in flight other than this scrape)."""
    finished, in_flight = 0.0, 0.0
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("dfd_http_requests_total{") and 'route="/infer"' in line:
            finished += float(line.rsplit(" ", 1)[1])
        elif line.startswith("dfd_http_requests_in_flight "):
            in_flight = float(line.rsplit(" ", 1)[1]) - 1
    return finished, in_flight


def wait_until_all_connected(base: str, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished, in_flight = infer_counts(base)
        if finished + in_flight >= expected:
            assert in_flight >= 1, "every request finished before SIGTERM; make the work slower"
            return
        time.sleep(0.01)
    raise AssertionError("the requests never reached the server")


def test_sigterm_drains_requests_in_flight_and_exits_zero(slow_checkpoint: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(
        slow_checkpoint, port, DFD_MAX_BATCH_SIZE="1", DFD_DRAIN_TIMEOUT_S="30", DFD_CACHE="off"
    )
    try:
        wait_ready(base, process)
        frame = image_bytes("JPEG", size=(640, 480))

        def post(i: int) -> int:
            response = httpx.post(
                f"{base}/infer",
                files={"file": (f"{i}.jpg", frame, "image/jpeg")},
                headers={"X-API-Key": TEST_KEY},
                timeout=60,
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(post, i) for i in range(16)]
            wait_until_all_connected(base, expected=16)
            process.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in futures]
        exit_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read() if process.stdout else ""
    assert statuses == [200] * 16, output
    assert exit_code == 0, output
    lines = output.splitlines()
    drain_at = next(i for i, line in enumerate(lines) if "draining" in line)
    answered_after = [line for line in lines[drain_at:] if '"POST /infer 200"' in line]
    assert answered_after, "no request was still in flight when SIGTERM arrived"
    assert "inference service stopped" in output
