"""``POST /infer/batch`` end to end: one result per file in order, item errors that fail only
their item, and the refusals of the whole request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.helpers.api import AUTH, assert_error
from tests.helpers.images import image_bytes, infer_files

pytestmark = pytest.mark.anyio
Part = tuple[str, tuple[str, bytes, str]]


def _parts(*items: tuple[str, bytes]) -> list[Part]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


async def test_batch_scores_each_file_in_order_like_infer(client: httpx.AsyncClient) -> None:
    images = [image_bytes(seed=seed) for seed in range(5)]
    response = await client.post(
        "/infer/batch",
        files=_parts(*((f"f{i}.jpg", data) for i, data in enumerate(images))),
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["model_version"] == "test-1"
    results = body["results"]
    assert [r["index"] for r in results] == list(range(5))
    assert [r["filename"] for r in results] == [f"f{i}.jpg" for i in range(5)]
    for result, data in zip(results, images, strict=True):
        single = (await client.post("/infer", files=infer_files(data), headers=AUTH)).json()
        assert result["fake_prob"] == pytest.approx(single["fake_prob"], abs=1e-5)
        assert result["real_prob"] == pytest.approx(1 - result["fake_prob"], abs=1e-6)
        assert result["label"] == single["label"]


async def test_one_bad_file_fails_alone(make_client: Callable[..., AsyncIterator]) -> None:
    async for client in make_client(max_upload_bytes=16 * 1024):
        response = await client.post(
            "/infer/batch",
            files=_parts(
                ("good.jpg", image_bytes(seed=1)),
                ("notes.txt", b"this is not an image"),
                ("empty.jpg", b""),
                ("huge.png", image_bytes("PNG", size=(200, 200))),
                ("cut.jpg", image_bytes(size=(64, 64))[:300]),
                ("also-good.png", image_bytes("PNG", seed=2)),
            ),
            headers=AUTH,
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["index"] for r in results] == list(range(6))
        codes = [r.get("error", {}).get("code") for r in results]
        assert codes == [
            None,
            "unsupported_media_type",
            "empty_file",
            "payload_too_large",
            "invalid_image",
            None,
        ]
        assert all(r["error"]["message"] for r in results if "error" in r)
        assert all("fake_prob" not in r for r in results if "error" in r)
        assert 0 <= results[5]["fake_prob"] <= 1
        assert (await client.get("/ready")).status_code == 200


async def test_refusals_of_the_whole_request(make_client: Callable[..., AsyncIterator]) -> None:
    one = image_bytes()
    async for client in make_client(max_batch_items=3, max_batch_bytes=64 * 1024):
        cases = [
            (await client.post("/infer/batch", files=_parts(("a", one))), 401, "unauthorized"),
            (
                await client.post(
                    "/infer/batch", files=_parts(*[(f"{i}", one) for i in range(4)]), headers=AUTH
                ),
                413,
                "too_much_work",
            ),
            (
                await client.post(
                    "/infer/batch",
                    files=_parts(*[(f"{i}", b"x" * 40_000) for i in range(2)]),
                    headers=AUTH,
                ),
                413,
                "payload_too_large",
            ),
            (
                await client.post("/infer/batch", files=infer_files(one), headers=AUTH),
                400,
                "bad_request",
            ),
            (
                await client.post(
                    "/infer/batch", content=one, headers={**AUTH, "Content-Type": "image/jpeg"}
                ),
                400,
                "bad_request",
            ),
        ]
        for response, status, code in cases:
            assert_error(response, status, code)
        ok = await client.post(
            "/infer/batch", files=_parts(*[(f"{i}", one) for i in range(3)]), headers=AUTH
        )
        assert ok.status_code == 200, ok.text


async def test_a_batch_takes_one_queue_place_per_file(
    make_client: Callable[..., AsyncIterator],
) -> None:
    async for client in make_client(max_queue_size=3):
        parts = _parts(*[(f"{i}", image_bytes(seed=i)) for i in range(4)])
        assert_error(
            await client.post("/infer/batch", files=parts, headers=AUTH), 413, "too_much_work"
        )
        # Files refused before scoring (here: empty) take no place.
        parts = _parts(*[(f"{i}", image_bytes(seed=i)) for i in range(3)], ("empty", b""))
        response = await client.post("/infer/batch", files=parts, headers=AUTH)
        assert response.status_code == 200, response.text


async def test_batch_items_share_the_cache_with_infer_and_are_stored(
    client: httpx.AsyncClient,
) -> None:
    known, new = image_bytes(seed=11), image_bytes(seed=12)
    single = await client.post("/infer", files=infer_files(known), headers=AUTH)
    assert single.headers["X-Cache"] == "miss"
    mixed = await client.post(
        "/infer/batch", files=_parts(("known.jpg", known), ("new.jpg", new)), headers=AUTH
    )
    assert mixed.status_code == 200, mixed.text
    assert mixed.headers["X-Cache"] == "miss"  # not every file was a hit
    results = mixed.json()["results"]
    assert results[0]["fake_prob"] == pytest.approx(single.json()["fake_prob"], abs=1e-6)
    again = await client.post(
        "/infer/batch", files=_parts(("known.jpg", known), ("new.jpg", new)), headers=AUTH
    )
    assert again.headers["X-Cache"] == "hit"
    assert [r["fake_prob"] for r in again.json()["results"]] == [r["fake_prob"] for r in results]
    request_id = mixed.json()["request_id"]
    item = await client.get(f"/predictions/{request_id}-1", headers=AUTH)
    assert item.status_code == 200, item.text
    assert item.json()["kind"] == "batch-item"
    assert item.json()["fake_prob"] == pytest.approx(results[1]["fake_prob"])
