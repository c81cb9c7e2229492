"""Rate limits on the real Redis (127.0.0.1:6379): one limit shared by two apps, and what happens
when Redis goes away (a TCP proxy cut): fail-open answers, fail-closed 503, recovery. These tests
fail, never skip, when Redis is not running."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

import httpx
import pytest
import redis
from prometheus_client import generate_latest

import src.serve.ratelimit as ratelimit
from src.core.settings import Settings
from tests.helpers.api import AUTH, assert_error
from tests.helpers.keyed_app import REDIS_URL, client_for, keyed_app, unique_prefix
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


def test_redis_is_there() -> None:
    assert redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()


def _remaining(response: httpx.Response) -> int:
    match = re.search(r'"rate";r=(\d+)', response.headers["ratelimit"])
    assert match, response.headers
    return int(match[1])


async def test_two_apps_share_one_limit_through_redis(
    settings_factory: Callable[..., Settings],
) -> None:
    shared = {"redis_url": REDIS_URL, "rate_limit_key_prefix": unique_prefix()}
    apps = [keyed_app(settings_factory(rate_limit="10/minute", **shared)) for _ in range(2)]
    codes = []
    async with client_for(apps[0]) as first, client_for(apps[1]) as second:
        for index in range(15):
            response = await (first if index % 2 else second).post("/t/charge/1", headers=AUTH)
            codes.append(response.status_code)
        last = await first.post("/t/charge/1", headers=AUTH)
    assert codes.count(200) == 10 and codes.count(429) == 5
    assert codes[:10] == [200] * 10
    assert _remaining(last) == 0


async def test_failed_authentications_are_counted_across_apps(
    settings_factory: Callable[..., Settings],
) -> None:
    shared = {"redis_url": REDIS_URL, "rate_limit_key_prefix": unique_prefix()}
    apps = [keyed_app(settings_factory(failed_auth_limit="4/minute", **shared)) for _ in range(2)]
    wrong = {"X-API-Key": "guess"}
    async with client_for(apps[0]) as first, client_for(apps[1]) as second:
        codes = [(await c.get("/t/infer", headers=wrong)).status_code for c in (first, second) * 3]
    assert codes == [401, 401, 401, 401, 429, 429]


async def test_fail_open_answers_through_an_outage_and_recovers(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ratelimit, "STORAGE_RETRY_S", 0.2)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings = settings_factory(
            rate_limit="3/minute",
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            rate_limit_key_prefix=unique_prefix(),
        )
        app = keyed_app(settings)
        async with client_for(app) as client:
            before = await client.post("/t/charge/1", headers=AUTH)
            proxy.cut()
            during = [await client.post("/t/charge/1", headers=AUTH) for _ in range(5)]
            down_metrics = generate_latest(app.state.metrics.registry).decode()
            proxy.restore()
            await asyncio.sleep(0.3)
            after = [await client.post("/t/charge/1", headers=AUTH) for _ in range(3)]
    assert _remaining(before) == 2
    assert [r.status_code for r in during] == [200] * 5  # over the limit, yet served: fail-open
    assert all("ratelimit" not in r.headers for r in during)
    assert "dfd_rate_limit_storage_up 0.0" in down_metrics
    assert 'dfd_rate_limit_requests_total{key="env-' in down_metrics
    assert 'result="unchecked"} 5.0' in down_metrics
    assert [r.status_code for r in after] == [200, 200, 429]
    assert _remaining(after[1]) == 0
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    outage = [e for e in logs if e["logger"] == "src.serve.ratelimit"]
    assert [e["level"] for e in outage] == ["ERROR", "WARNING"]  # down once, back once
    assert "unreachable" in outage[0]["message"] and "again" in outage[1]["message"]


async def test_fail_closed_answers_503_while_redis_is_away(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "STORAGE_RETRY_S", 0.2)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings = settings_factory(
            rate_limit="3/minute",
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            rate_limit_key_prefix=unique_prefix(),
            rate_limit_failure_mode="closed",
        )
        async with client_for(keyed_app(settings)) as client:
            assert (await client.post("/t/charge/1", headers=AUTH)).status_code == 200
            proxy.cut()
            refused = await client.post("/t/charge/1", headers=AUTH)
            guessed = await client.get("/t/infer", headers={"X-API-Key": "guess"})
            proxy.restore()
            await asyncio.sleep(0.3)
            back = await client.post("/t/charge/1", headers=AUTH)
    error = assert_error(refused, 503, "rate_limit_unavailable")
    assert "rate-limit store" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert_error(guessed, 503, "rate_limit_unavailable")
    assert back.status_code == 200 and _remaining(back) == 1


async def test_changing_the_strategy_starts_fresh_counts_instead_of_failing(
    settings_factory: Callable[..., Settings],
) -> None:
    shared = {"redis_url": REDIS_URL, "rate_limit_key_prefix": unique_prefix()}
    for strategy in ("moving-window", "fixed-window", "sliding-window-counter"):
        app = keyed_app(
            settings_factory(rate_limit="5/minute", rate_limit_strategy=strategy, **shared)
        )
        async with client_for(app) as client:
            response = await client.post("/t/charge/2", headers=AUTH)
        assert response.status_code == 200
        assert _remaining(response) == 3, strategy  # its own count, not a storage error


async def test_connections_that_died_in_an_outage_do_not_fail_requests_after_it(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "STORAGE_RETRY_S", 0.2)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings = settings_factory(
            rate_limit="100/minute",
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            rate_limit_key_prefix=unique_prefix(),
        )
        app = keyed_app(settings)
        async with client_for(app) as client:

            async def burst() -> list[httpx.Response]:
                calls = [client.post("/t/charge/1", headers=AUTH) for _ in range(6)]
                return list(await asyncio.gather(*calls))

            await burst()  # several pooled connections
            proxy.cut()
            await client.post("/t/charge/1", headers=AUTH)
            proxy.restore()
            await asyncio.sleep(0.3)
            after = await burst()
    assert all("ratelimit" in r.headers for r in after)  # every one counted, none unchecked
    text = generate_latest(app.state.metrics.registry).decode()
    assert 'result="unchecked"} 1.0' in text
