"""Nothing lost when PostgreSQL goes away: a real server writes through a TCP proxy that the test
cuts. Answers keep coming, results go to the on-disk spool, the server is even restarted during
the outage, and once the database is back exactly one row per answer exists."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg

from tests.helpers.api import AUTH
from tests.helpers.databases import postgres_database
from tests.helpers.images import image_bytes
from tests.helpers.server import free_port, start_server, stop_server, wait_ready
from tests.helpers.tcp_proxy import TcpProxy

BEFORE, DURING = 3, 12


def stored_ids(url: str) -> list[str]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection:
        return [row[0] for row in connection.execute("SELECT request_id FROM predictions")]


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def infer(base: str, seed: int) -> str:
    response = httpx.post(
        f"{base}/infer",
        content=image_bytes(seed=seed),
        headers={**AUTH, "content-type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def wait_for_rows(url: str, expected: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = stored_ids(url)
        if len(ids) >= expected:
            return ids
        time.sleep(0.2)
    raise AssertionError(f"{len(ids)} rows, expected {expected}")


def test_a_database_outage_loses_no_result_and_stores_none_twice(
    checkpoint_path: Path, tmp_path: Path
) -> None:
    with postgres_database() as url, TcpProxy("127.0.0.1", 5432) as proxy:
        proxied = url.replace(":5432/", f":{proxy.port}/")
        settings = {
            "DFD_DATABASE_URL": proxied,
            "DFD_SPOOL_PATH": str(tmp_path / "spool" / "results.jsonl"),
            "DFD_JOBS_DIR": str(tmp_path / "jobs"),
            "DFD_STORE_RETRY_S": "0.5",
            "DFD_CACHE": "off",  # every request goes to the model and to the store
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(checkpoint_path, port, **settings)
        try:
            wait_ready(base, server)
            answered = [infer(base, seed) for seed in range(BEFORE)]
            wait_for_rows(url, BEFORE)

            proxy.cut()
            answered += [infer(base, seed) for seed in range(100, 100 + DURING)]
            assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
            lookup = httpx.get(f"{base}/predictions/{answered[-1]}", headers=AUTH, timeout=10)
            assert lookup.status_code in (200, 503), lookup.text  # queued, or the store is away
            deadline = time.monotonic() + 20
            while metric(base, "dfd_store_rows_spooled_total") < DURING:
                assert time.monotonic() < deadline, "the results never reached the spool"
                time.sleep(0.1)
            assert metric(base, "dfd_store_write_failures_total") >= 1
            assert metric(base, "dfd_store_spool_bytes") > 0
            assert len(stored_ids(url)) == BEFORE
        finally:
            stop_server(server)  # a restart in the middle of the outage
        # on disk: the spool, or the spool set aside by a replay attempt the outage cut short
        spooled = [
            tmp_path / "spool" / name for name in ("results.jsonl", "results.jsonl.replaying")
        ]
        assert sum(path.stat().st_size for path in spooled if path.exists()) > 0

        proxy.restore()
        server = start_server(checkpoint_path, port, **settings)
        try:
            wait_ready(base, server)
            ids = wait_for_rows(url, BEFORE + DURING)
            time.sleep(1.0)  # a second replay would show up as more rows by now
            ids = stored_ids(url)
            assert sorted(ids) == sorted(answered)
            assert len(ids) == len(set(ids)) == BEFORE + DURING
            found = httpx.get(f"{base}/predictions/{answered[-1]}", headers=AUTH, timeout=10)
            assert found.status_code == 200 and found.json()["request_id"] == answered[-1]
            assert metric(base, "dfd_store_spool_bytes") == 0
        finally:
            stop_server(server)
