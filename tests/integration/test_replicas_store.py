"""Two replicas, one PostgreSQL, one Redis: each sees the other's results and cache entries.

Both start at once on an empty database, so their migrations at start race (an advisory lock
serialises them)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from tests.helpers.api import AUTH
from tests.helpers.databases import REDIS_URL, postgres_database, redis_prefix
from tests.helpers.images import image_bytes
from tests.helpers.server import free_port, start_server, stop_server, wait_ready


def infer(base: str, data: bytes) -> httpx.Response:
    response = httpx.post(
        f"{base}/infer", content=data, headers={**AUTH, "content-type": "image/jpeg"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def lookup(base: str, request_id: str, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base}/predictions/{request_id}", headers=AUTH, timeout=10)
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_two_replicas_share_history_feedback_and_cache(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    prefix = redis_prefix()
    with postgres_database() as url:
        servers = []
        bases = []
        try:
            for name in ("a", "b"):
                port = free_port()
                bases.append(f"http://127.0.0.1:{port}")
                servers.append(
                    start_server(
                        checkpoint_path,
                        port,
                        DFD_DATABASE_URL=url,
                        DFD_REDIS_URL=REDIS_URL,
                        DFD_CACHE_KEY_PREFIX=prefix,
                        DFD_SPOOL_PATH=str(tmp_path / name / "spool.jsonl"),
                        DFD_JOBS_DIR=str(tmp_path / name / "jobs"),
                    )
                )
            for base, server in zip(bases, servers, strict=True):
                wait_ready(base, server)
            a, b = bases
            data = image_bytes(seed=42)

            first = infer(a, data)
            assert first.headers["x-cache"] == "miss"
            second = infer(b, data)
            assert second.headers["x-cache"] == "hit"  # A's answer, from the shared Redis
            assert second.json()["fake_prob"] == first.json()["fake_prob"]

            request_id = first.json()["request_id"]
            seen_by_b = lookup(b, request_id)
            assert seen_by_b.status_code == 200, seen_by_b.text
            assert seen_by_b.json()["fake_prob"] == first.json()["fake_prob"]
            feedback = httpx.post(
                f"{b}/predictions/{request_id}/feedback",
                json={"label": "fake"},
                headers=AUTH,
                timeout=10,
            )
            assert feedback.status_code == 200, feedback.text
            assert lookup(a, request_id).json()["feedback"]["label"] == "fake"
            seen_by_a = lookup(a, second.json()["request_id"])
            assert seen_by_a.status_code == 200 and seen_by_a.json()["cached"] is True
            listed = httpx.get(f"{a}/predictions", headers=AUTH, timeout=10).json()["items"]
            assert {item["request_id"] for item in listed} == {
                request_id,
                second.json()["request_id"],
            }
        finally:
            for server in servers:
                stop_server(server)
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"{prefix}*"):
                client.delete(key)
            client.close()
