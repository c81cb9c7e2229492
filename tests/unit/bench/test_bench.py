"""Smoke tests of the benchmark harness pieces (the benchmark itself is not run in CI)."""

from __future__ import annotations

import asyncio
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.frames import (
    MAX_SIDE,
    MIN_SIDE,
    encode_jpeg,
    generate_frames,
    load_frames,
    synthetic_frame,
)
from bench.loadgen import multipart_request, read_response, run_level
from bench.procs import process_cpu_s, rss_mb
from bench.report import evaluate_targets, feasibility, feasibility_table, results_table
from bench.stats import histogram_delta, histogram_quantile, percentile, summarize
from src.media.images import ImageLimits, decode_image


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 5.5
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 100) == 10.0
    assert percentile([4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summary_counts_statuses_and_times_only_successes() -> None:
    latencies = [0.010, 0.020, 0.030, 0.040, 0.001, 5.0]
    statuses = ["200", "200", "200", "200", "503", "timeout"]
    summary = summarize(8, 2.0, latencies, statuses)
    assert summary["requests"] == 6
    assert summary["ok"] == 4
    assert summary["throughput_rps"] == 2.0  # 4 answers 200 in 2 s
    assert summary["p50_ms"] == 25.0
    assert summary["max_ms"] == 40.0
    assert summary["statuses"] == {"200": 4, "503": 1, "timeout": 1}


def test_histogram_delta_and_quantile() -> None:
    before = {"buckets": {0.01: 5.0, 0.1: 5.0, math.inf: 5.0}, "sum": 0.02, "count": 5.0}
    after = {"buckets": {0.01: 5.0, 0.1: 15.0, math.inf: 15.0}, "sum": 0.52, "count": 15.0}
    delta = histogram_delta(before, after)
    assert delta is not None
    assert delta["count"] == 10.0
    assert delta["sum"] == pytest.approx(0.5)
    assert delta["buckets"] == {0.01: 0.0, 0.1: 10.0, math.inf: 10.0}
    # all ten new observations are in (0.01, 0.1]: the median is interpolated to the middle
    assert histogram_quantile(0.5, delta["buckets"]) == pytest.approx(0.055)


def test_generated_frames_are_distinct_decodable_jpegs() -> None:
    frames = generate_frames(count=4, seed=1)
    assert len(set(frames)) == 4
    limits = ImageLimits(frozenset({"JPEG"}), 10 * 2**20, 40_000_000, 12_000, 16)
    for jpeg in frames:
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
        rgb = decode_image(jpeg, limits)
        assert min(rgb.shape[:2]) >= MIN_SIDE and max(rgb.shape[:2]) <= MAX_SIDE
        assert rgb.std() > 10  # not a flat colour
    assert generate_frames(count=2, seed=1) == frames[:2]


def test_frames_from_example_faces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    encode = encode_jpeg(synthetic_frame(rng, 120, 150))
    (tmp_path / "face.jpg").write_bytes(encode)
    frames = load_frames(tmp_path, count=6)
    assert len(set(frames)) == 6
    for jpeg in frames:
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.format == "JPEG"
            assert min(image.size) >= MIN_SIDE and max(image.size) <= MAX_SIDE
    assert len(load_frames(tmp_path / "missing", count=2)) == 2  # generated instead


def test_load_generator_against_a_tiny_http_server() -> None:
    """Keep-alive requests, Content-Length and chunked bodies, and status counting."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                seen.append(await reader.readexactly(length))
                if len(seen) % 5 == 0:
                    writer.write(
                        b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}"
                    )
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    )
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def scenario() -> tuple[object, object]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            payload = multipart_request("127.0.0.1", port, "/infer", "key", b"\xff\xd8jpeg")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            first = await read_response(reader)
            writer.close()
            level = await run_level(port, [payload], 4, 20, 10.0, 5.0)
            polite = await run_level(port, [payload], 1, 5, 10.0, 5.0, retry_after_cap_s=0.2)
        finally:
            server.close()
        assert polite.summary()["statuses"] == {"200": 4, "503": 1}
        assert polite.wall_s >= 0.2  # waited for Retry-After (capped) after its 503
        return first, level

    first, level = asyncio.run(scenario())
    assert first.status == 200 and first.body == b"abcde"  # type: ignore[attr-defined]
    assert b'name="file"' in seen[0] and b"\xff\xd8jpeg" in seen[0]
    summary = level.summary()  # type: ignore[attr-defined]
    assert summary["requests"] == 20
    assert summary["statuses"] == {"200": 16, "503": 4}


def test_proc_readings_for_this_process() -> None:
    assert rss_mb(os.getpid()) > 10
    assert process_cpu_s(os.getpid()) > 0


def _results(c32_rps: float, c32_p99: float, statuses: dict[str, int]) -> dict:
    def row(concurrency: int, rps: float, p50: float, p99: float) -> dict:
        return {
            "concurrency": concurrency,
            "throughput_rps": rps,
            "p50_ms": p50,
            "p95_ms": p99,
            "p99_ms": p99,
            "statuses": {"200": 10},
        }

    return {
        "raw": {
            "batches": [
                {"batch": 1, "median_ms": 10.0, "min_ms": 9.0, "throughput_ips": 100.0},
                {"batch": 8, "median_ms": 40.0, "min_ms": 39.0, "throughput_ips": 200.0},
            ],
            "best": {"batch": 8, "median_ms": 40.0, "throughput_ips": 200.0},
            "batch1": {"batch": 1, "median_ms": 10.0, "throughput_ips": 100.0},
            "device": "cpu",
            "torch_threads": 2,
        },
        "meta": {"nproc": 2},
        "settings": {"max_batch_size": 8, "batch_timeout_ms": 5.0},
        "service": {
            "levels": [
                row(1, 60.0, 20.0, 30.0),
                {**row(32, c32_rps, 60.0, c32_p99), "server_cpu_ms_per_ok": 12.5},
            ]
        },
        "naive": {"levels": [row(32, 100.0, 300.0, 400.0)]},
        "small_queue": {
            "concurrency": 128,
            "max_queue_size": 16,
            "summary": {**row(128, 50.0, 900.0, 1000.0), "statuses": statuses},
            "rss_before_mb": 500.0,
            "rss_after_mb": 520.0,
            "rss_peak_mb": 530.0,
        },
    }


def test_targets_pass_and_fail_on_known_numbers() -> None:
    good = {t["target"]: t["result"] for t in evaluate_targets(_results(185.0, 80.0, {"200": 9}))}
    assert set(good.values()) == {"PASS"}
    assert len(good) == 6
    bad = evaluate_targets(_results(120.0, 90.0, {"200": 5, "500": 1}))
    results = [t["result"] for t in bad]
    assert results == ["FAIL", "PASS", "FAIL", "FAIL", "FAIL", "PASS"]
    assert "| service | 32 | 120.0 |" in results_table(_results(120.0, 90.0, {"200": 1}))


def test_feasibility_from_measured_numbers() -> None:
    # 2 cores, raw best 200 img/s at batch 8 in 40 ms on 2 threads: the model alone needs
    # 10 ms of CPU per image; 90% of 200 = 180 req/s leaves 2000 / 180 = 11.1 ms per request.
    budget, latency = feasibility(_results(150.0, 80.0, {"200": 9}))
    assert "budget 11.1 ms" in budget["value"] and "takes 10.0 ms" in budget["value"]
    assert "leaving 1.1 ms" in budget["value"]
    assert "12.5 ms per answer" in budget["verdict"] and "2.5 ms beyond" in budget["verdict"]
    assert "ceiling here is 160.0 req/s" in budget["verdict"]
    # Little's law: 32 clients / 200 img/s = 160 ms, above the 85 ms goal (5 + 2 x 40).
    assert "at least 160.0 ms" in latency["value"] and "85.0 ms" in latency["value"]
    assert latency["verdict"].startswith("no batch size")
    roomy = _results(150.0, 80.0, {"200": 9})
    roomy["raw"]["batches"][1]["median_ms"] = 100.0  # goal 205 ms > 160 ms floor
    assert feasibility(roomy)[1]["verdict"].startswith("reachable if")
    roomy["raw"]["device"] = "cuda"  # the model's cores are not the server's: no CPU budget
    assert [row["check"] for row in feasibility(roomy)] == ["p99 at c=32 (Little's law)"]
    assert feasibility_table(feasibility(roomy)).count("\n") == 2


def test_raw_model_timing_interleaves_batch_sizes(checkpoint_path: Path) -> None:
    from bench.raw_model import measure

    threads = torch.get_num_threads()
    try:
        result = measure(str(checkpoint_path), 1, "cpu", [2, 1], budget_s=0.05)
    finally:
        torch.set_num_threads(threads)
    assert [row["batch"] for row in result["batches"]] == [1, 2]
    assert all(row["iterations"] >= 7 for row in result["batches"])
    assert all(0 < row["min_ms"] <= row["median_ms"] for row in result["batches"])
    assert result["batch1"]["batch"] == 1
    assert result["best"]["throughput_ips"] == max(r["throughput_ips"] for r in result["batches"])
    assert result["device"] == "cpu" and result["torch_threads"] == 1
