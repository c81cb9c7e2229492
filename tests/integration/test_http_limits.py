"""The request-head cap and deadline, against a real server and raw sockets."""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from src.core.settings import Settings
from src.serve.__main__ import uvicorn_config
from src.serve.protocol import LimitedHttpToolsProtocol
from tests.helpers.api import TEST_KEY
from tests.helpers.images import image_bytes
from tests.helpers.server import served

HEAD_LIMIT = 8192
HEAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(checkpoint_path: Path) -> Iterator[tuple[str, int]]:
    with served(
        checkpoint_path,
        DFD_MAX_HEADER_BYTES=str(HEAD_LIMIT),
        DFD_HEADER_TIMEOUT_S=str(HEAD_TIMEOUT_S),
    ) as (base, port, _):
        yield base, port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(HEAD_TIMEOUT_S + 4)
    return sock


def request(path: str = "/health", *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: test", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def assert_refused(raw: bytes, status: int, code: str) -> None:
    """The service's one error shape, no request id (there is no request), and a close."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert int(status_line.split()[1]) == status, raw[:300]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == code and error["message"] and error["request_id"] is None


def test_a_1_mb_header_gets_431_at_once_and_the_connection_closed(
    server: tuple[str, int],
) -> None:
    with connect(server[1]) as sock:
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request("/health", b"X-Big: " + b"a" * 1_000_000))
        raw = read_until_closed(sock)
        assert time.monotonic() - started < HEAD_TIMEOUT_S  # refused, not timed out
    assert_refused(raw, 431, "header_fields_too_large")


def test_a_head_streamed_slowly_is_refused_as_soon_as_it_passes_the_cap(
    server: tuple[str, int],
) -> None:
    start = b"GET /health HTTP/1.1\r\nHost: test\r\n"
    line = b"X-Pad: " + b"p" * 1015 + b"\r\n"  # 1 KiB
    with connect(server[1]) as sock:
        sock.sendall(start)
        sent, answered_after = len(start), None
        while sent < 2 * HEAD_LIMIT:
            sock.sendall(line)
            sent += len(line)
            # nothing may come back before the cap is passed; the answer must come right after
            if select.select([sock], [], [], 0.02 if sent <= HEAD_LIMIT else 0.5)[0]:
                answered_after = sent
                break
        raw = read_until_closed(sock)
    assert answered_after is not None
    assert HEAD_LIMIT < answered_after <= HEAD_LIMIT + len(line)
    assert_refused(raw, 431, "header_fields_too_large")


def test_silent_and_stalled_connections_are_closed_while_others_are_served(
    server: tuple[str, int],
) -> None:
    base, port = server
    kept = connect(port)  # idle after an answer: keep-alive's business, not the head deadline's
    kept.sendall(request("/health"))
    assert read_response(kept)[0] == 200
    answered = time.monotonic()
    silent = [connect(port) for _ in range(20)]
    stalled = connect(port)
    stalled.sendall(b"GET /hea")
    started = time.monotonic()
    with httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(5):
            asked = time.monotonic()
            assert client.get("/health").status_code == 200
            assert time.monotonic() - asked < 0.5
    assert_refused(read_until_closed(stalled), 408, "request_timeout")
    stalled_for = time.monotonic() - started
    assert [read_until_closed(sock) for sock in silent] == [b""] * len(silent)
    all_closed_after = time.monotonic() - started
    assert stalled_for >= 0.7 * HEAD_TIMEOUT_S
    assert all_closed_after <= HEAD_TIMEOUT_S + 2
    time.sleep(max(0.0, answered + 1.3 * HEAD_TIMEOUT_S - time.monotonic()))
    kept.sendall(request("/health"))
    assert read_response(kept)[0] == 200
    for sock in (kept, stalled, *silent):
        sock.close()


def test_ordinary_and_large_heads_under_the_cap_work_request_after_request(
    server: tuple[str, int],
) -> None:
    big = b"X-Pad: " + b"p" * (HEAD_LIMIT - 1024)  # 7 KiB: two of them exceed one cap
    with connect(server[1]) as sock:
        for headers in ((b"Accept: */*", b"User-Agent: test"), (big,), (big,)):
            sock.sendall(request("/health", *headers))
            status, response_headers, _ = read_response(sock)
            assert status == 200
            assert response_headers.get("connection") != "close"


def test_a_body_slower_than_the_head_deadline_is_not_cut(server: tuple[str, int]) -> None:
    body = image_bytes("JPEG")
    head = (
        b"POST /infer HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        + f"X-API-Key: {TEST_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    with connect(server[1]) as sock:
        sock.sendall(head)
        half = len(body) // 2
        for part in (body[:half], body[half:]):
            time.sleep(HEAD_TIMEOUT_S * 0.6)
            sock.sendall(part)
        status, _, answer = read_response(sock)
    assert status == 200, answer


def test_uvicorn_config_passes_the_limits_to_every_worker(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        workers=2, max_header_bytes=4096, header_timeout_s=3.5, keepalive_timeout_s=7
    )
    config = uvicorn_config(settings)
    # workers > 1 start by spawn, which pickles the config
    http = pickle.loads(pickle.dumps(config.http))
    assert isinstance(http, functools.partial)
    assert http.func is LimitedHttpToolsProtocol
    assert http.keywords == {"max_head_bytes": 4096, "head_timeout_s": 3.5}
    assert config.timeout_keep_alive == 7
