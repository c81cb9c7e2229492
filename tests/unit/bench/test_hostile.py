"""Pieces of ``python -m bench.hostile`` that can be checked without starting a service."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image

from bench.hostile import (
    AttackLog,
    Sockets,
    _exchange,
    bomb_webp,
    parse_args,
    results_table,
    split_request,
    summarize_scenario,
    trickle,
    with_header,
)
from bench.loadgen import LOOPBACK, multipart_request
from bench.stats import LevelResult
from src.core.settings import Settings


def test_bomb_is_tiny_and_declares_the_intended_pixels() -> None:
    bomb = bomb_webp(4000, 1000)
    assert len(bomb) < 1024
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.format == "WEBP"
        assert image.size == (4000, 1000)


def test_default_bomb_is_inside_the_default_limits() -> None:
    width, height = parse_args(["--checkpoint", "model.pt"]).bomb_size
    fields = Settings.model_fields
    assert width * height <= fields["max_image_pixels"].default
    assert max(width, height) <= fields["max_image_side"].default
    assert width * height > 0.9 * fields["max_image_pixels"].default  # a bomb, not a frame


def test_request_surgery() -> None:
    request = multipart_request(LOOPBACK, 8000, "/infer", "key", b"\xff\xd8jpeg")
    head, body = split_request(request)
    assert head.endswith(b"\r\n\r\n") and head + body == request
    assert f"Content-Length: {len(body)}".encode() in head
    padded = with_header(request, "X-Filler", b"a" * 10)
    assert padded.startswith(b"POST /infer HTTP/1.1\r\nX-Filler: aaaaaaaaaa\r\nHost:")
    assert padded.endswith(body)


def test_summary_computes_success_rate_percentiles_and_late_answers() -> None:
    latencies = [0.010, 0.020, 0.030, 0.040, 0.050, 3.0, 0.001, 10.0]
    statuses = ["200", "200", "200", "200", "200", "200", "503", "timeout"]
    normal = LevelResult(concurrency=2, wall_s=4.0, latencies_s=latencies, statuses=statuses)
    log = AttackLog()
    log.record("bomb", "200", 1.5)
    log.record("bomb", "abandoned", 1.0)
    log.record("bomb", "abandoned", 1.0)
    row = summarize_scenario(
        "deadline",
        normal,
        log,
        timeout_s=2.0,
        rss={"before": 300.0, "peak": 900.0, "after": 400.0},
        work={"preprocessed": 12, "scored": 10, "infer_statuses": {"200": 7}},
    )
    assert row["normal"]["requests"] == 8
    assert row["normal"]["ok"] == 6
    assert row["normal"]["success_rate"] == 0.75
    assert row["normal"]["p50_ms"] == 35.0  # of the six 200 answers
    assert row["normal"]["p99_ms"] == pytest.approx(2852.5)  # 50 ms + 0.95 x (3000 - 50) ms
    assert row["normal"]["late"] == 2  # the 3 s answer and the 10 s timeout
    assert row["normal"]["slowest_answer_ms"] == 3000.0  # a timeout is no answer
    assert row["attacker"]["outcomes"] == {"bomb:200": 1, "bomb:abandoned": 2}
    assert row["work"]["answered_200"] == 7  # six normal + one bomb
    assert row["work"]["scored_without_200"] == 3
    table = results_table([row])
    assert table.count("\n") == 2  # header, rule, one row
    for cell in (
        "75.0% of 8",
        "2 (> 2 s; slowest answer 3000 ms)",
        "12 / 10 / 7",
        "300 / 900 / 400",
    ):
        assert f"| {cell} |" in table


def test_summary_of_a_run_without_requests_or_metrics() -> None:
    row = summarize_scenario("slow_upload", LevelResult(2, 1.0), AttackLog(), 30.0)
    assert row["normal"]["success_rate"] is None
    assert "no requests" in results_table([row])


async def _receiver(arrivals: list[tuple[float, int]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            arrivals.append((time.perf_counter(), len(data)))
        writer.close()

    return await asyncio.start_server(handle, LOOPBACK, 0)


def test_trickle_sends_at_the_intended_rate() -> None:
    async def scenario() -> tuple[int, list[tuple[float, int]], float]:
        arrivals: list[tuple[float, int]] = []
        server = await _receiver(arrivals)
        port = server.sockets[0].getsockname()[1]
        async with server:
            _reader, writer = await asyncio.open_connection(LOOPBACK, port)
            started = time.perf_counter()
            sent = await trickle(writer, b"x" * 1000, 40.0, started + 1.0, interval_s=0.1)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.05)
        return sent, arrivals, started

    sent, arrivals, started = asyncio.run(scenario())
    # 4 bytes every 0.1 s from t=0 to t=0.9: ten chunks, 40 bytes, not more
    assert sent == 40
    assert sum(n for _, n in arrivals) == 40
    assert len(arrivals) >= 8  # chunks arrive separately (no Nagle batching)
    assert arrivals[-1][0] - started >= 0.85
    assert all(at - started < 0.5 for at, _ in arrivals[:5])  # spread over the second


def test_exchange_records_the_answer_and_closes_every_socket() -> None:
    """A slow upload (4 B/s) against a server that answers 408 after 3 body bytes, and a silent
    socket that the same server closes: both outcomes recorded, both sockets closed."""

    async def scenario() -> AttackLog:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
            except TimeoutError:  # an idle timeout for the silent socket
                writer.close()
                return
            await reader.readexactly(3)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        log = AttackLog()
        sockets = Sockets(port, log, limit=2)
        request = multipart_request(LOOPBACK, port, "/infer", "key", b"\xff\xd8" + b"j" * 100)
        head, body = split_request(request)
        deadline = time.perf_counter() + 2.0
        async with server:
            await asyncio.gather(
                _exchange(sockets, "slow", head, body, 4.0, deadline, deadline),
                _exchange(sockets, "silent", b"", b"", None, deadline, deadline),
            )
        assert not sockets._open
        return log

    started = time.perf_counter()
    log = asyncio.run(scenario())
    assert log.outcomes == {"slow:408": 1, "silent:closed": 1}
    assert log.connections == 2 and log.peak_connections == 2
    elapsed = time.perf_counter() - started
    assert 0.4 < elapsed < 1.5  # 3 bytes at 4 B/s (t = 0, 0.25, 0.5 s), not the 2 s deadline
