"""Per-key rate limits and quotas on the memory backend: RateLimit headers that shrink, 429 with
Retry-After at the limit, per-key overrides, units, and bounded metric labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from src.core.settings import Settings
from src.keys import KeyFile
from src.serve.app import create_app
from src.serve.ratelimit import PolicyState, RateLimitStatus
from tests.helpers.api import AUTH, TEST_KEY, assert_error, started_client
from tests.helpers.images import image_bytes, infer_files
from tests.helpers.keyed_app import client_for, keyed_app

pytestmark = pytest.mark.anyio
STATE = re.compile(r'"(?P<name>rate|quota)";r=(?P<r>\d+);t=(?P<t>\d+)')


def remaining(response: httpx.Response) -> dict[str, int]:
    return {m["name"]: int(m["r"]) for m in STATE.finditer(response.headers["ratelimit"])}


def test_headers_follow_the_ietf_draft() -> None:
    status = RateLimitStatus(
        (PolicyState("rate", 10, 60, 7, 42), PolicyState("quota", 1000, 86400, 990, 8000))
    )
    assert dict(status.headers()) == {
        b"ratelimit-policy": b'"rate";q=10;w=60, "quota";q=1000;w=86400',
        b"ratelimit": b'"rate";r=7;t=42, "quota";r=990;t=8000',
    }
    assert RateLimitStatus(()).headers() == []


async def test_headers_shrink_then_429_with_retry_after(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(rate_limit="3/minute"))
    async with client_for(app) as client:
        answers = [await client.post("/t/charge/1", headers=AUTH) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [remaining(a)["rate"] for a in answers] == [2, 1, 0, 0]
    assert all(a.headers["ratelimit-policy"] == '"rate";q=3;w=60' for a in answers)
    error = assert_error(answers[3], 429, "rate_limited")
    assert "3 per minute" in error["message"]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60


async def test_inference_charges_one_unit_per_image(
    settings_factory: Callable[..., Settings],
) -> None:
    async for client in started_client(create_app(settings_factory(rate_limit="2/minute"))):
        files = infer_files(image_bytes())
        answers = [await client.post("/infer", files=files, headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [remaining(a)["rate"] for a in answers] == [1, 0, 0]
    assert_error(answers[2], 429, "rate_limited")


async def test_no_limit_means_no_headers(settings_factory: Callable[..., Settings]) -> None:
    async with client_for(keyed_app(settings_factory())) as client:
        response = await client.post("/t/charge/5", headers=AUTH)
    assert response.status_code == 200
    assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers


async def test_per_key_overrides_beat_the_default(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    generous, _ = store.create("generous", ["infer"], rate="5/minute")
    free, _ = store.create("free", ["infer"], rate="unlimited")
    app = keyed_app(settings_factory(keys_file=store.path, rate_limit="1/minute"))
    async with client_for(app) as client:
        default = [await client.post("/t/charge/1", headers=AUTH) for _ in range(2)]
        wide = [await client.post("/t/charge/1", headers={"X-API-Key": generous}) for _ in range(5)]
        open_ = await client.post("/t/charge/100", headers={"X-API-Key": free})
    assert [a.status_code for a in default] == [200, 429]
    assert [a.status_code for a in wide] == [200] * 5
    assert remaining(wide[-1]) == {"rate": 0}
    assert open_.status_code == 200 and "ratelimit" not in open_.headers


async def test_units_a_video_or_batch_costs(settings_factory: Callable[..., Settings]) -> None:
    async with client_for(keyed_app(settings_factory(rate_limit="10/minute"))) as client:
        first = await client.post("/t/charge/7", headers=AUTH)
        over = await client.post("/t/charge/4", headers=AUTH)
        fits = await client.post("/t/charge/3", headers=AUTH)
        too_big = await client.post("/t/charge/11", headers=AUTH)
    assert remaining(first) == {"rate": 3}
    assert_error(over, 429, "rate_limited")
    assert remaining(fits) == {"rate": 0}
    error = assert_error(too_big, 413, "too_much_work")
    assert "11 units" in error["message"]


async def test_a_quota_refusal_uses_no_rate_and_a_rate_refusal_no_quota(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(rate_limit="6/minute", quota="5/day"))
    async with client_for(app) as client:
        first = await client.post("/t/charge/3", headers=AUTH)
        refused = await client.post("/t/charge/3", headers=AUTH)
        after = await client.post("/t/charge/2", headers=AUTH)
    assert remaining(first) == {"rate": 3, "quota": 2}
    assert_error(refused, 429, "rate_limited")
    assert "quota of 5 per day" in refused.json()["error"]["message"]
    assert remaining(refused) == {"rate": 3, "quota": 2}
    assert remaining(after) == {"rate": 1, "quota": 0}
    assert after.headers["ratelimit-policy"] == '"rate";q=6;w=60, "quota";q=5;w=86400'


async def test_keyed_answers_that_charge_nothing_still_carry_the_headers(
    settings_factory: Callable[..., Settings],
) -> None:
    app = keyed_app(settings_factory(rate_limit="4/minute", api_key_scopes=["infer"]))
    async with client_for(app) as client:
        await client.post("/t/charge/1", headers=AUTH)
        reading = await client.get("/t/infer", headers=AUTH)
        forbidden = await client.get("/t/history", headers=AUTH)
        anonymous = await client.get("/t/infer")
        probe = await client.get("/health")
    assert remaining(reading) == {"rate": 3}
    assert_error(forbidden, 403, "forbidden")
    assert remaining(forbidden) == {"rate": 3}
    assert "ratelimit" not in anonymous.headers and "ratelimit" not in probe.headers


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_every_strategy_allows_exactly_the_limit(
    settings_factory: Callable[..., Settings], strategy: str
) -> None:
    app = keyed_app(settings_factory(rate_limit="5/minute", rate_limit_strategy=strategy))
    async with client_for(app) as client:
        codes = [(await client.post("/t/charge/1", headers=AUTH)).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3


async def test_metrics_name_keys_up_to_the_top_n_and_the_rest_other(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    keys = [store.create(f"team-{i}", ["infer"])[0] for i in range(3)]
    settings = settings_factory(
        keys_file=store.path, rate_limit="1/minute", rate_limit_metric_keys=2
    )
    app = keyed_app(settings)
    async with client_for(app) as client:
        for key in keys:
            for _ in range(2):
                await client.post("/t/charge/1", headers={"X-API-Key": key})
    text = generate_latest(app.state.metrics.registry).decode()
    for label in ("team-0", "team-1", "other"):
        assert f'dfd_rate_limit_requests_total{{key="{label}",result="allowed"}} 1.0' in text
        assert f'dfd_rate_limit_requests_total{{key="{label}",result="limited"}} 1.0' in text
    assert "team-2" not in text
    assert 'dfd_rate_limit_units_total{key="team-0"} 1.0' in text
    assert TEST_KEY not in text and all(key not in text for key in keys)
