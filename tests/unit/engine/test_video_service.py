"""The engine's video and batch paths: slices that let single images through, item errors,
the decode budget, and a video that stops when its request ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from src.core.errors import InferenceTimeoutError, UnsupportedMediaTypeError
from src.engine.preprocess import FramePreparer
from src.engine.service import InferenceService
from src.engine.video import Stop, prepare_video
from src.media.video import VideoLimits
from src.models.checkpoint import ModelMetadata
from tests.helpers.backends import ScriptedBackend
from tests.helpers.images import image_bytes
from tests.helpers.videos import video_bytes
from tests.unit.engine.conftest import LIMITS

pytestmark = pytest.mark.anyio


async def test_a_single_image_is_scored_between_a_videos_slices(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend, max_batch_size=2, batch_timeout_s=0.0)
    await service.start()
    backend.delay_s = 0.05
    finished: list[str] = []

    async def video() -> None:
        with service.admit(8):
            await service.predict_video(video_bytes(frames=16), frames=8, rule="mean")
        finished.append("video")

    async def image() -> None:
        for _ in range(2000):  # until the video's first slice is on the model
            if backend.batches:
                break
            await asyncio.sleep(0.005)
        with service.admit(1):
            await service.predict_bytes(image_bytes())
        finished.append("image")

    await asyncio.gather(video(), image())
    # 8 crops in slices of 2: the image waits for one slice, not for the whole video.
    assert finished == ["image", "video"]
    assert max(backend.batches) <= 2
    assert service.decode_budget.used == 0


async def test_video_frame_scores_match_single_frame_scores(
    make_service: Callable[..., InferenceService],
) -> None:
    service = make_service(max_batch_size=4)
    await service.start()
    with service.admit(6):
        video = await service.predict_video(video_bytes(), frames=6, rule="max")
    assert video.frames_scored == 6
    scores = [frame.fake_prob for frame in video.frames]
    assert video.fake_prob == pytest.approx(max(s for s in scores if s is not None))
    assert video.info.codec == "h264"
    assert all(frame.face is None for frame in video.frames)


async def test_batch_items_fail_alone_and_keep_their_order(
    make_service: Callable[..., InferenceService],
) -> None:
    service = make_service(max_batch_size=2)
    await service.start()
    items = [image_bytes(seed=1), b"not an image", image_bytes(seed=2), image_bytes(seed=1)]
    with service.admit(len(items)):
        results = await service.predict_each(items)
    assert isinstance(results[1], UnsupportedMediaTypeError)
    first, third, fourth = results[0], results[2], results[3]
    assert not isinstance(first, Exception) and not isinstance(fourth, Exception)
    assert not isinstance(third, Exception)
    assert first.fake_prob == pytest.approx(fourth.fake_prob, abs=1e-6)
    assert first.fake_prob != third.fake_prob


async def test_a_batch_past_its_deadline_leaves_no_work_behind(
    make_service: Callable[..., InferenceService], checkpoint_path: Path
) -> None:
    backend = ScriptedBackend(checkpoint_path)
    service = make_service(backend, max_batch_size=2, batch_timeout_s=0.0)
    await service.start()
    backend.delay_s = 0.1
    items = [image_bytes(seed=i) for i in range(12)]
    with service.admit(len(items)), pytest.raises(InferenceTimeoutError):
        await service.predict_each(items, deadline=time.perf_counter() + 0.15)
    scored_then = sum(backend.batches)
    await asyncio.sleep(0.4)
    # At most the batch running at the deadline finishes; the rest was dropped.
    assert sum(backend.batches) - scored_then <= 2
    assert sum(backend.batches) < len(items)


def test_a_video_job_stops_once_its_request_is_abandoned(checkpoint_path: Path) -> None:
    metadata = ModelMetadata(architecture="test_efficientnet", input_size=32, version="t")
    preparer = FramePreparer(metadata, LIMITS)
    stop = Stop(deadline=time.perf_counter() + 60)
    stop.abandon()
    with pytest.raises(InferenceTimeoutError):
        prepare_video(video_bytes(), 4, VideoLimits(), preparer, stop)
    late = Stop(deadline=time.perf_counter() - 1)
    with pytest.raises(InferenceTimeoutError):
        prepare_video(video_bytes(), 4, VideoLimits(), preparer, late)
    fine = prepare_video(video_bytes(), 4, VideoLimits(), preparer, Stop(time.perf_counter() + 60))
    assert len(fine.crops) == 4
    assert all(crop.shape == (32, 32, 3) and crop.dtype == np.uint8 for crop in fine.crops)
