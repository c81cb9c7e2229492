"""History, feedback, the result cache and jobs through the HTTP API (the app in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI, Request

from src.core.settings import Settings
from src.serve.app import create_app
from src.serve.deps import Caller, get_history_caller
from tests.helpers.api import AUTH, ROTATED_KEY, TEST_KEY, assert_error, started_client
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.databases import REDIS_URL, postgres_database, redis_prefix
from tests.helpers.images import image_bytes

pytestmark = pytest.mark.anyio
OTHER = {"X-API-Key": ROTATED_KEY}
JPEG = {"content-type": "image/jpeg"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite here; the store's own tests run every query on PostgreSQL too, and
    test_the_round_trip_on_postgresql runs this API on it."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def store_settings(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> Callable[..., Settings]:
    def factory(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": f"sqlite:///{tmp_path / 'store.db'}",
            "spool_path": tmp_path / "spool" / "results.jsonl",
            "jobs_dir": tmp_path / "jobs",
            "record_dir": tmp_path / "recordings",
        }
        values.update(overrides)
        return settings_factory(**values)

    return factory


@pytest.fixture
async def app(store_settings: Callable[..., Settings], database_url: str) -> AsyncIterator[FastAPI]:
    yield create_app(store_settings(database_url=database_url))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for c in started_client(app):
        yield c


async def infer(
    client: httpx.AsyncClient, data: bytes, headers: dict[str, str] = AUTH
) -> httpx.Response:
    response = await client.post("/infer", content=data, headers={**headers, **JPEG})
    assert response.status_code == 200, response.text
    return response


def as_admin(app: FastAPI) -> None:
    async def admin() -> Caller:
        return Caller(key_id="admin-key", scopes=frozenset({"infer", "history", "admin"}))

    app.dependency_overrides[get_history_caller] = admin


async def test_an_answer_is_stored_looked_up_and_cached(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    data = image_bytes(seed=1)
    first = await infer(client, data)
    assert first.headers["x-cache"] == "miss"
    second = await infer(client, data)
    assert second.headers["x-cache"] == "hit"
    assert second.json()["fake_prob"] == first.json()["fake_prob"]
    assert second.json()["label"] == first.json()["label"]
    assert second.json()["request_id"] != first.json()["request_id"]
    assert second.json()["timings"]["batch_size"] == 0
    await infer(client, image_bytes(seed=2))  # other bytes: a miss
    app.state.store.writer.flush()

    stored = await client.get(f"/predictions/{first.json()['request_id']}", headers=AUTH)
    assert stored.status_code == 200, stored.text
    body = stored.json()
    answer = first.json()
    for field in ("request_id", "fake_prob", "label", "threshold", "model_version"):
        assert body[field] == answer[field]
    assert body["model_name"] == answer["model_architecture"]
    assert body["kind"] == "image" and body["media_type"] == "image/jpeg"
    assert body["input_bytes"] == len(data) and not body["cached"]
    assert body["timings"] == answer["timings"]
    assert body["feedback"] is None and body["created_at"].endswith("Z")
    cached = await client.get(f"/predictions/{second.json()['request_id']}", headers=AUTH)
    assert cached.json()["cached"] is True
    assert cached.json()["sha256"] == body["sha256"]


async def test_a_result_can_be_read_right_after_its_answer(client: httpx.AsyncClient) -> None:
    answer = await infer(client, image_bytes(seed=3))
    found = await client.get(f"/predictions/{answer.json()['request_id']}", headers=AUTH)
    assert found.status_code == 200  # from the writer's queue or the database: either way there


async def test_someone_elses_result_is_404_but_an_admin_sees_it(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    answer = await infer(client, image_bytes(seed=4))
    request_id = answer.json()["request_id"]
    app.state.store.writer.flush()
    assert_error(await client.get(f"/predictions/{request_id}", headers=OTHER), 404, "not_found")
    listed = await client.get("/predictions", headers=OTHER)
    assert listed.json()["items"] == []
    feedback = await client.post(
        f"/predictions/{request_id}/feedback", json={"label": "fake"}, headers=OTHER
    )
    assert_error(feedback, 404, "not_found")
    as_admin(app)
    assert (await client.get(f"/predictions/{request_id}", headers=OTHER)).status_code == 200
    assert len((await client.get("/predictions", headers=OTHER)).json()["items"]) == 1


async def test_feedback_is_recorded_replaced_and_counted(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    request_id = (await infer(client, image_bytes(seed=5))).json()["request_id"]
    url = f"/predictions/{request_id}/feedback"
    first = await client.post(url, json={"label": "fake", "comment": "known fake"}, headers=AUTH)
    assert first.status_code == 200, first.text
    assert first.json()["replaced"] is False
    assert first.json()["feedback"]["revision"] == 1
    second = await client.post(url, json={"label": "real"}, headers=AUTH)
    assert second.json()["replaced"] is True
    assert second.json()["feedback"]["previous_label"] == "fake"
    assert second.json()["feedback"]["revision"] == 2
    stored = (await client.get(f"/predictions/{request_id}", headers=AUTH)).json()
    assert stored["feedback"]["label"] == "real" and stored["feedback"]["comment"] is None
    metrics = (await client.get("/metrics")).text
    assert 'dfd_feedback_total{label="fake",replaced="false"} 1.0' in metrics
    assert 'dfd_feedback_total{label="real",replaced="true"} 1.0' in metrics
    assert 'dfd_cache_lookups_total{cache="memory",result="miss"}' in metrics
    assert "dfd_store_rows_written_total" in metrics


@pytest.mark.parametrize(
    "body",
    [{"label": "maybe"}, {}, {"label": "fake", "comment": "x" * 2001}, {"label": "fake", "x": 1}],
)
async def test_bad_feedback_is_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    request_id = (await infer(client, image_bytes(seed=6))).json()["request_id"]
    response = await client.post(f"/predictions/{request_id}/feedback", json=body, headers=AUTH)
    assert_error(response, 422, "validation_error")


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/predictions/nope", headers=AUTH), 404, "not_found")
    evil = "x'%20OR%20'1'='1"
    assert_error(await client.get(f"/predictions/{evil}", headers=AUTH), 404, "not_found")
    response = await client.post("/predictions/nope/feedback", json={"label": "real"}, headers=AUTH)
    assert_error(response, 404, "not_found")
    assert_error(await client.get("/jobs/nope", headers=AUTH), 404, "not_found")


async def test_history_needs_a_key(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/predictions"), 401, "unauthorized")
    assert_error(await client.get("/predictions/x"), 401, "unauthorized")


async def test_listing_filters_and_pages(client: httpx.AsyncClient, app: FastAPI) -> None:
    answers = [(await infer(client, image_bytes(seed=10 + i))).json() for i in range(5)]
    app.state.store.writer.flush()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await client.get("/predictions", params=params, headers=AUTH)
        assert page.status_code == 200, page.text
        seen += [item["request_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [a["request_id"] for a in reversed(answers)]  # newest first, each once
    label = answers[0]["label"]
    by_label = await client.get("/predictions", params={"label": label}, headers=AUTH)
    assert all(item["label"] == label for item in by_label.json()["items"])
    sha = (await client.get(f"/predictions/{answers[0]['request_id']}", headers=AUTH)).json()[
        "sha256"
    ]
    by_sha = await client.get("/predictions", params={"sha256": sha.upper()}, headers=AUTH)
    assert [i["request_id"] for i in by_sha.json()["items"]] == [answers[0]["request_id"]]
    by_version = await client.get(
        "/predictions", params={"model_version": "x' OR '1'='1"}, headers=AUTH
    )
    assert by_version.json() == {"items": [], "next_cursor": None}
    future = await client.get(
        "/predictions", params={"since": "2999-01-01T00:00:00Z"}, headers=AUTH
    )
    assert future.json()["items"] == []
    huge = await client.get("/predictions", params={"limit": 10**12}, headers=AUTH)
    assert huge.status_code == 200 and len(huge.json()["items"]) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJ4IiwgMV0"},
        {"label": "maybe"},
        {"sha256": "abc"},
        {"since": "yesterday"},
        {"limit": 0},
        {"limit": "many"},
    ],
)
async def test_malformed_listing_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    assert_error(
        await client.get("/predictions", params=params, headers=AUTH), 422, "validation_error"
    )


async def test_a_job_is_polled_by_its_owner_only(client: httpx.AsyncClient, app: FastAPI) -> None:
    async def echo(path: Path, params: dict[str, Any]) -> dict[str, Any]:
        return {"size": path.stat().st_size, **params}

    app.state.jobs.register("echo", echo)
    key_id = app.state.key_ring.identify(TEST_KEY).key_id
    job = await app.state.jobs.submit("echo", b"12345", {"frames": 4}, key_id)
    for _ in range(200):
        polled = await client.get(f"/jobs/{job.id}", headers=AUTH)
        assert polled.status_code == 200
        if polled.json()["status"] == "done":
            break
        await asyncio.sleep(0.02)
    assert polled.json()["result"] == {"size": 5, "frames": 4}
    assert_error(await client.get(f"/jobs/{job.id}", headers=OTHER), 404, "not_found")


async def test_store_off_keeps_inference_and_answers_503_for_history(
    store_settings: Callable[..., Settings], database_url: str
) -> None:
    app = create_app(store_settings(store="off", cache="off"))
    async for client in started_client(app):
        answer = await infer(client, image_bytes(seed=7))
        assert answer.headers["x-cache"] == "miss"
        assert (await infer(client, image_bytes(seed=7))).headers["x-cache"] == "miss"
        response = await client.get(f"/predictions/{answer.json()['request_id']}", headers=AUTH)
        assert_error(response, 503, "store_unavailable")


async def test_the_shared_cache_is_keyed_to_the_model_not_the_threshold(
    store_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    prefix = redis_prefix()
    client = redis.Redis.from_url(REDIS_URL)
    other_model = make_checkpoint(tmp_path / "other.pt", seed=7)
    data = image_bytes(seed=8)
    redis_settings = {"redis_url": REDIS_URL, "cache": "redis", "cache_key_prefix": prefix}

    async def first_answer(**overrides: object) -> httpx.Response:
        """One answer from a fresh app, closed afterwards (its cache writes finished)."""
        app = create_app(store_settings(**redis_settings, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await infer(client, data)

    try:
        fresh = await first_answer(database_url=f"sqlite:///{tmp_path / 'a.db'}")
        assert fresh.headers["x-cache"] == "miss"
        again = await first_answer(
            database_url=f"sqlite:///{tmp_path / 'b.db'}", decision_threshold=0.0
        )
        assert again.headers["x-cache"] == "hit"  # another process, the same model
        assert again.json()["fake_prob"] == fresh.json()["fake_prob"]
        assert (again.json()["label"], again.json()["threshold"]) == ("fake", 0.0)
        other = await first_answer(
            database_url=f"sqlite:///{tmp_path / 'c.db'}", checkpoint_path=other_model
        )
        assert other.headers["x-cache"] == "miss"  # another model: never the cached answer
    finally:
        assert list(client.scan_iter(f"{prefix}*"))  # the entry was in the shared Redis
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


async def test_the_round_trip_on_postgresql(store_settings: Callable[..., Settings]) -> None:
    with postgres_database() as url:
        app = create_app(store_settings(database_url=url))
        async for client in started_client(app):
            request_id = (await infer(client, image_bytes(seed=20))).json()["request_id"]
            assert (await infer(client, image_bytes(seed=20))).headers["x-cache"] == "hit"
            feedback = await client.post(
                f"/predictions/{request_id}/feedback", json={"label": "fake"}, headers=AUTH
            )
            assert feedback.status_code == 200, feedback.text
            page = (await client.get("/predictions", params={"limit": 1}, headers=AUTH)).json()
            assert len(page["items"]) == 1 and page["next_cursor"]
            rest = await client.get(
                "/predictions", params={"cursor": page["next_cursor"]}, headers=AUTH
            )
            assert [item["request_id"] for item in rest.json()["items"]] == [request_id]
            assert rest.json()["items"][0]["feedback"]["label"] == "fake"


async def test_a_declared_job_kind_runs_through_accept_job(
    store_settings: Callable[..., Settings],
) -> None:
    from src.serve.routes.jobs import JOB_KINDS, accept_job, job_kind

    @job_kind("test-echo")
    def echo_job(app: FastAPI) -> Any:
        async def run(path: Path, params: dict[str, Any]) -> dict[str, Any]:
            return {
                "bytes": len(path.read_bytes()),
                "model": app.state.service.metadata.version,
                "key_id": params["key_id"],
                "job_id": path.stem,
            }

        return run

    app = create_app(store_settings())

    @app.post("/test-async")
    async def submit(request: Request) -> Any:
        caller = app.state.key_ring.identify(TEST_KEY)
        return await accept_job(request, caller, "test-echo", b"abcdef", {})

    try:
        async for client in started_client(app):
            accepted = await client.post("/test-async")
            assert accepted.status_code == 202
            location = accepted.headers["location"]
            assert location == f"/jobs/{accepted.json()['job_id']}"
            for _ in range(200):
                polled = (await client.get(location, headers=AUTH)).json()
                if polled["status"] == "done":
                    break
                await asyncio.sleep(0.02)
            key_id = app.state.key_ring.identify(TEST_KEY).key_id
            assert polled["result"] == {
                "bytes": 6,
                "model": "test-1",
                "key_id": key_id,
                "job_id": accepted.json()["job_id"],
            }
    finally:
        JOB_KINDS.pop("test-echo")


async def test_history_needs_the_history_scope(store_settings: Callable[..., Settings]) -> None:
    app = create_app(store_settings(api_key_scopes=["infer"]))
    async for client in started_client(app):
        request_id = (await infer(client, image_bytes(seed=30))).json()["request_id"]
        response = await client.get(f"/predictions/{request_id}", headers=AUTH)
        assert_error(response, 403, "forbidden")
        assert_error(await client.get("/jobs/x", headers=AUTH), 403, "forbidden")
