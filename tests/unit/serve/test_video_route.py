"""``POST /infer/video`` end to end through the app factory: the contract, every refusal, and
the face followed across frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from statistics import mean

import httpx
import pytest

from tests.helpers.api import AUTH, assert_error
from tests.helpers.images import image_bytes
from tests.helpers.videos import audio_only_bytes, face_video_bytes, truncated, video_bytes

pytestmark = pytest.mark.anyio


def _files(data: bytes, name: str = "clip.mp4") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "video/mp4")}


async def test_video_contract(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/infer/video?frames=8", files=_files(video_bytes(frames=20, fps=10)), headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["fake_prob"] + body["real_prob"] == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == ("fake" if body["fake_prob"] >= body["threshold"] else "real")
    assert body["model_version"] == "test-1"
    assert body["aggregate"] == "confident"
    video = body["video"]
    assert video["codec"] == "h264"
    assert (video["width"], video["height"]) == (128, 96)
    assert video["duration_s"] == pytest.approx(2.0, abs=0.15)
    assert video["fps"] == pytest.approx(10.0)
    assert video["frames_sampled"] == video["frames_scored"] == 8
    frames = body["frames"]
    assert len(frames) == 8
    times = [frame["time_s"] for frame in frames]
    assert times == sorted(times) and times[0] < 0.3 and times[-1] > 1.6
    assert all(frame["face"] is None and 0 <= frame["fake_prob"] <= 1 for frame in frames)
    assert len({frame["index"] for frame in frames}) == 8
    assert set(body["timings"]) == {"decode_ms", "detect_ms", "inference_ms", "total_ms"}


@pytest.mark.parametrize("rule", ["mean", "max", "confident"])
async def test_aggregate_rules_combine_the_frame_scores(
    client: httpx.AsyncClient, rule: str
) -> None:
    response = await client.post(
        f"/infer/video?frames=6&aggregate={rule}", files=_files(video_bytes()), headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [frame["fake_prob"] for frame in body["frames"]]
    assert len(set(scores)) > 1, "the stamped frames should score differently"
    expected = {"mean": mean(scores), "max": max(scores)}.get(rule)
    if expected is not None:
        assert body["fake_prob"] == pytest.approx(expected, abs=1e-5)
    assert body["aggregate"] == rule


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "mkv", "avi"])
async def test_containers_are_recognised_from_the_bytes(
    client: httpx.AsyncClient, container: str
) -> None:
    # The part's name and media type say MP4 whatever the container: the bytes decide.
    response = await client.post(
        "/infer/video?frames=4", files=_files(video_bytes(container)), headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert response.json()["video"]["frames_scored"] == 4


async def test_raw_video_body(client: httpx.AsyncClient) -> None:
    data = video_bytes()
    raw = await client.post(
        "/infer/video?frames=4", content=data, headers={**AUTH, "Content-Type": "video/mp4"}
    )
    multipart = await client.post("/infer/video?frames=4", files=_files(data), headers=AUTH)
    assert raw.status_code == 200, raw.text
    assert raw.json()["fake_prob"] == pytest.approx(multipart.json()["fake_prob"], abs=1e-6)


async def test_refusals(client: httpx.AsyncClient) -> None:
    good = video_bytes()
    cases: list[tuple[httpx.Response, int, str]] = [
        (await client.post("/infer/video", files=_files(good)), 401, "unauthorized"),
        (
            await client.post("/infer/video", files=_files(image_bytes()), headers=AUTH),
            415,
            "unsupported_media_type",
        ),
        (
            await client.post("/infer/video", files=_files(truncated(good, 0.5)), headers=AUTH),
            422,
            "invalid_video",
        ),
        (
            await client.post("/infer/video", files=_files(audio_only_bytes()), headers=AUTH),
            422,
            "invalid_video",
        ),
        (
            await client.post("/infer/video?frames=65", files=_files(good), headers=AUTH),
            422,
            "video_limit_exceeded",
        ),
        (
            await client.post("/infer/video?frames=0", files=_files(good), headers=AUTH),
            422,
            "validation_error",
        ),
        (
            await client.post("/infer/video?aggregate=median", files=_files(good), headers=AUTH),
            422,
            "validation_error",
        ),
        (
            await client.post(
                "/infer/video", content=good, headers={**AUTH, "Content-Type": "text/plain"}
            ),
            400,
            "bad_request",
        ),
        (
            await client.post(
                "/infer/video", files={"video": ("a.mp4", good, "video/mp4")}, headers=AUTH
            ),
            400,
            "bad_request",
        ),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert (await client.get("/ready")).status_code == 200


async def test_video_limits_are_settings(make_client: Callable[..., AsyncIterator]) -> None:
    data = video_bytes(size=(128, 96), frames=20, fps=10)
    async for client in make_client(
        video_max_bytes=len(data) - 1, video_max_duration_s=1.0, video_max_frame_pixels=256
    ):
        assert_error(
            await client.post("/infer/video", files=_files(data), headers=AUTH),
            413,
            "payload_too_large",
        )
    async for client in make_client(video_max_duration_s=1.0):
        error = assert_error(
            await client.post("/infer/video", files=_files(data), headers=AUTH),
            422,
            "video_limit_exceeded",
        )
        assert "lasts 2.0 s" in error["message"]
    async for client in make_client(video_max_frame_pixels=128 * 96 - 1):
        assert_error(
            await client.post("/infer/video", files=_files(data), headers=AUTH),
            422,
            "video_limit_exceeded",
        )


async def test_a_video_takes_one_queue_place_per_frame(
    make_client: Callable[..., AsyncIterator],
) -> None:
    async for client in make_client(max_queue_size=8, video_max_frames=16):
        ok = await client.post("/infer/video?frames=8", files=_files(video_bytes()), headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert_error(
            await client.post("/infer/video?frames=9", files=_files(video_bytes()), headers=AUTH),
            413,
            "too_much_work",
        )


async def test_the_larger_face_is_followed_and_faceless_videos_are_refused(
    make_client: Callable[..., AsyncIterator],
) -> None:
    async for client in make_client(face_crop="on"):
        two = await client.post(
            "/infer/video?frames=5", files=_files(face_video_bytes(faces=2)), headers=AUTH
        )
        assert two.status_code == 200, two.text
        frames = two.json()["frames"]
        faces = [frame["face"] for frame in frames if frame["face"] is not None]
        assert len(faces) >= 4
        # The astronaut's head (left, ~200 px wide), never the smaller copy on the right.
        assert all(face["box"][0] < 150 and face["box"][2] > 80 for face in faces)
        assert two.json()["video"]["frames_scored"] == len(faces)
        assert all((f["face"] is None) == (f["fake_prob"] is None) for f in frames)
        error = assert_error(
            await client.post(
                "/infer/video?frames=4", files=_files(face_video_bytes(faces=0)), headers=AUTH
            ),
            422,
            "no_face_detected",
        )
        assert "4 sampled frames" in error["message"]


async def test_a_video_costs_its_frames_and_a_batch_its_files(
    make_client: Callable[..., AsyncIterator],
) -> None:
    async for client in make_client(rate_limit="10/minute"):
        ok = await client.post("/infer/video?frames=8", files=_files(video_bytes()), headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert "r=2" in ok.headers["RateLimit"]  # 10 - 8 frames
        assert_error(
            await client.post("/infer/video?frames=4", files=_files(video_bytes()), headers=AUTH),
            429,
            "rate_limited",
        )
        parts = [("files", (f"{i}.jpg", image_bytes(seed=i), "image/jpeg")) for i in range(3)]
        assert_error(
            await client.post("/infer/batch", files=parts, headers=AUTH), 429, "rate_limited"
        )
        two = parts[:2]
        assert (await client.post("/infer/batch", files=two, headers=AUTH)).status_code == 200


async def test_a_video_is_cached_stored_and_run_as_a_job(client: httpx.AsyncClient) -> None:
    data = video_bytes(frames=20)
    first = await client.post("/infer/video?frames=6", files=_files(data), headers=AUTH)
    again = await client.post("/infer/video?frames=6", files=_files(data), headers=AUTH)
    other = await client.post("/infer/video?frames=5", files=_files(data), headers=AUTH)
    assert first.status_code == again.status_code == other.status_code == 200, again.text
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert other.headers["X-Cache"] == "miss"  # another frame count is another answer
    assert again.json()["frames"] == first.json()["frames"]
    assert again.json()["fake_prob"] == first.json()["fake_prob"]
    assert again.json()["request_id"] != first.json()["request_id"]

    stored = await client.get(f"/predictions/{first.json()['request_id']}", headers=AUTH)
    assert stored.status_code == 200, stored.text
    record = stored.json()
    assert record["kind"] == "video"
    assert record["fake_prob"] == pytest.approx(first.json()["fake_prob"])
    assert [f["fake_prob"] for f in record["frame_scores"]] == [
        f["fake_prob"] for f in first.json()["frames"]
    ]

    accepted = await client.post(
        "/infer/video?frames=6&aggregate=mean&mode=async", files=_files(data), headers=AUTH
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["Location"]
    for _ in range(200):
        job = (await client.get(location, headers=AUTH)).json()
        if job["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "done", job
    sync = await client.post(
        "/infer/video?frames=6&aggregate=mean", files=_files(data), headers=AUTH
    )
    assert job["result"]["fake_prob"] == pytest.approx(sync.json()["fake_prob"], abs=1e-6)
    assert job["result"]["video"]["frames_scored"] == 6
    kept = await client.get(f"/predictions/{job['job_id']}", headers=AUTH)
    assert kept.status_code == 200, kept.text
    assert kept.json()["kind"] == "video"
