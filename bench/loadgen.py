"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams (loopback only).

Each virtual client holds one connection and sends requests back to back; a shared ticket counter
bounds the number of requests and a deadline bounds the time. Raw streams keep the generator's
own CPU use low: on a small machine it shares the cores with the server it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import LevelResult

LOOPBACK = "127.0.0.1"


def multipart_request(host: str, port: int, path: str, api_key: str, jpeg: bytes) -> bytes:
    """A complete POST with the image as multipart field ``file``."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="frame.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"X-API-Key: {api_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return head + body


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One HTTP/1.1 response: status line, headers, then a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, payload: bytes) -> Response:
        await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(payload)
        await self.writer.drain()
        response = await read_response(self.reader)
        if response.headers.get("connection", "").lower() == "close":
            self.close()
        return response

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_level(
    port: int,
    payloads: Sequence[bytes],
    concurrency: int,
    requests: int,
    time_limit_s: float,
    request_timeout_s: float,
    host: str = LOOPBACK,
    retry_after_cap_s: float = 0.0,
) -> LevelResult:
    """Send ``requests`` payloads (cycled) from ``concurrency`` clients; stop early at the limit.

    Connections are opened before the clock starts. A request that does not finish within
    ``request_timeout_s`` counts as ``timeout``; one that fails on the socket as ``error:<Type>``.
    With ``retry_after_cap_s`` > 0 a client that gets 503 waits for its Retry-After (at most
    that long) before its next request, as a well-behaved client would.
    """
    if host != LOOPBACK:
        raise ValueError("the benchmark only talks to 127.0.0.1")
    connections = [_Connection(host, port) for _ in range(concurrency)]
    # A connection that cannot open now is retried by its first request, which records the error.
    await asyncio.gather(*(connection.open() for connection in connections), return_exceptions=True)
    tickets = itertools.count()
    latencies: list[float] = []
    statuses: list[str] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + time_limit_s

    async def client(connection: _Connection) -> None:
        while time.perf_counter() < deadline:
            ticket = next(tickets)
            if ticket >= requests:
                return
            payload = payloads[ticket % len(payloads)]
            sent = time.perf_counter()
            pause = 0.0
            try:
                response = await asyncio.wait_for(connection.request(payload), request_timeout_s)
                status = str(response.status)
                if response.status == 503 and retry_after_cap_s > 0:
                    pause = min(retry_after_cap_s, float(response.headers.get("retry-after", 0)))
            except TimeoutError:
                status = "timeout"
                connection.close()
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                status = f"error:{type(exc).__name__}"
                connection.close()
            latencies.append(time.perf_counter() - sent)
            statuses.append(status)
            if pause:
                await asyncio.sleep(pause)

    try:
        await asyncio.gather(*(client(connection) for connection in connections))
    finally:
        wall = time.perf_counter() - started
        for connection in connections:
            connection.close()
    return LevelResult(
        concurrency=concurrency,
        wall_s=wall,
        latencies_s=latencies,
        statuses=statuses,
        client_cpu_s=time.process_time() - cpu_started,
    )


def build_payloads(port: int, api_key: str, frames: Sequence[bytes]) -> list[bytes]:
    return [multipart_request(LOOPBACK, port, "/infer", api_key, jpeg) for jpeg in frames]
