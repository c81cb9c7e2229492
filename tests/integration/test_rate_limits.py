"""Keys and rate limits across replicas, against real server processes and the real Redis.

Two ``python -m src.serve`` replicas share one Redis through a TCP proxy the test can cut: A
fails open, B fails closed (the setting is per process, the limit shared). A key limited to 10 per
minute gets exactly 10 answers of 200 across both; with Redis cut, A keeps answering and B answers
503, and both enforce the limit again once Redis is back; revoked and expired keys are refused on
both within the re-read interval; and no key appears in any log line, metric or error.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from src.keys import KeyFile
from tests.helpers import REPO_ROOT
from tests.helpers.api import TEST_KEY
from tests.helpers.images import image_bytes
from tests.helpers.server import free_port, start_server, stop_server, wait_ready
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow
RELOAD_S = 0.5
STORAGE_RETRY_S = 1.0  # src.serve.ratelimit.STORAGE_RETRY_S, the back-off after an outage
IMAGE = image_bytes()


@dataclass
class Replica:
    base: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def infer(self, key: str) -> httpx.Response:
        return httpx.post(
            f"{self.base}/infer",
            files={"file": ("f.jpg", IMAGE, "image/jpeg")},
            headers={"X-API-Key": key},
            timeout=30,
        )

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text


@dataclass
class Cluster:
    a: Replica  # fails open
    b: Replica  # fails closed
    proxy: TcpProxy
    store: KeyFile
    keys: dict[str, str]
    seen: list[str] = field(default_factory=list)  # every answer body and metrics page


def _drain(replica: Replica) -> None:
    assert replica.process.stdout is not None
    for line in replica.process.stdout:
        replica.lines.append(line)


@pytest.fixture(scope="module")
def cluster(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    store = KeyFile(tmp_path_factory.mktemp("keys") / "keys.json")
    keys = {
        name: store.create(name, ["infer"], rate=rate)[0]
        for name, rate in (
            ("shared-10", "10/minute"),
            ("outage-2", "2/minute"),
            ("doomed", None),
        )
    }
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings = {
            "DFD_KEYS_FILE": str(store.path),
            "DFD_KEYS_RELOAD_S": str(RELOAD_S),
            "DFD_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "DFD_RATE_LIMIT_KEY_PREFIX": f"dfd-it-{uuid.uuid4().hex[:12]}",
            "DFD_REDIS_TIMEOUT_S": "0.5",
            "DFD_CACHE": "off",  # the result cache would share the Redis; only limits here
        }
        modes = ("open", "closed")
        replicas = []
        for mode in modes:
            port = free_port()
            process = start_server(
                checkpoint_path, port, DFD_RATE_LIMIT_FAILURE_MODE=mode, **settings
            )
            replicas.append(Replica(f"http://127.0.0.1:{port}", process))
        drains = [threading.Thread(target=_drain, args=(r,), daemon=True) for r in replicas]
        for thread in drains:
            thread.start()
        try:
            for replica in replicas:
                wait_ready(replica.base, replica.process)
            yield Cluster(*replicas, proxy=proxy, store=store, keys=keys)
        finally:
            for replica in replicas:
                stop_server(replica.process)
            for thread in drains:
                thread.join(timeout=10)


def test_two_replicas_enforce_one_limit(cluster: Cluster) -> None:
    key = cluster.keys["shared-10"]
    answers = [(cluster.a if i % 2 else cluster.b).infer(key) for i in range(14)]
    cluster.seen.extend(a.text for a in answers)
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 10 and codes == [200] * 10 + [429] * 4
    assert answers[9].headers["ratelimit"].startswith('"rate";r=0;')
    assert answers[0].headers["ratelimit-policy"] == '"rate";q=10;w=60'
    for refused in answers[10:]:
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_redis_outage_fail_open_and_fail_closed_then_recovery(cluster: Cluster) -> None:
    key = cluster.keys["outage-2"]
    assert [cluster.a.infer(key).status_code for _ in range(3)] == [200, 200, 429]
    cluster.proxy.cut()
    try:
        served = [cluster.a.infer(key) for _ in range(3)]
        refused = cluster.b.infer(key)
        down = cluster.a.metrics()
    finally:
        cluster.proxy.restore()
    cluster.seen.extend([*(a.text for a in served), refused.text, down])
    assert [a.status_code for a in served] == [200] * 3  # over the limit, served: fail-open
    assert all("ratelimit" not in a.headers for a in served)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "rate_limit_unavailable"
    assert "rate-limit store" in refused.json()["error"]["message"]
    assert "retry-after" in refused.headers
    assert "dfd_rate_limit_storage_up 0.0" in down
    assert 'dfd_rate_limit_requests_total{key="outage-2",result="unchecked"} 3.0' in down

    time.sleep(STORAGE_RETRY_S + 0.2)
    after = [cluster.a.infer(key), cluster.b.infer(key)]
    cluster.seen.extend(a.text for a in after)
    assert [a.status_code for a in after] == [429, 429]  # the count survived the outage
    assert all(a.headers["ratelimit"].startswith('"rate";r=0;') for a in after)
    assert "dfd_rate_limit_storage_up 1.0" in cluster.a.metrics()
    for replica in (cluster.a, cluster.b):
        outage = [line for line in replica.lines if "rate-limit storage" in line]
        assert any("unreachable" in line for line in outage)
        assert any("reachable again" in line for line in outage)


def _refused_everywhere(cluster: Cluster, key: str, reason: str, within_s: float) -> float:
    """Seconds until both replicas refuse ``key`` with ``reason`` (fails after ``within_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        answers = [cluster.a.infer(key), cluster.b.infer(key)]
        cluster.seen.extend(a.text for a in answers)
        if all(a.status_code == 401 and reason in a.json()["error"]["message"] for a in answers):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not refused as {reason} on both replicas within {within_s} s")


def test_a_revoked_key_is_refused_on_every_replica_within_the_reload_interval(
    cluster: Cluster,
) -> None:
    key = cluster.keys["doomed"]
    assert cluster.a.infer(key).status_code == cluster.b.infer(key).status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "src.keys", "--file", str(cluster.store.path), "revoke", "doomed"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _refused_everywhere(cluster, key, "revoked", within_s=RELOAD_S + 2.0) <= RELOAD_S + 2.0


def test_an_expired_key_is_refused_on_every_replica_at_once(cluster: Cluster) -> None:
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    key, _ = cluster.store.create("brief", ["infer"], expires_at=expires_at)
    deadline = time.monotonic() + RELOAD_S + 2.0
    while cluster.a.infer(key).status_code != 200 or cluster.b.infer(key).status_code != 200:
        assert time.monotonic() < deadline, "the new key never became valid on both replicas"
        time.sleep(0.05)
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()))
    assert _refused_everywhere(cluster, key, "expired", within_s=1.0) < 1.0


def test_no_key_appears_in_logs_metrics_or_errors(cluster: Cluster) -> None:
    wrong = "wrong-" + cluster.keys["shared-10"]
    cluster.seen.append(cluster.a.infer(wrong).text)
    cluster.seen.extend(r.metrics() for r in (cluster.a, cluster.b))
    time.sleep(0.2)  # the last access lines reach the drain threads
    logs = "".join(line for r in (cluster.a, cluster.b) for line in r.lines)
    everything = logs + "\n".join(cluster.seen)
    assert '"src.access"' in logs and "shared-10" in everything  # the haystack is real
    for key in (*cluster.keys.values(), TEST_KEY):
        assert key not in everything
