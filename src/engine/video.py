"""A video's preprocessing, as one job for a preprocessing thread: decode the sampled frames,
find the faces, follow one person across them, and cut the crops the model scores.

One job per video, on one thread, so a video never holds more than one of the preprocessing
threads that single images need too (the service also caps how many videos preprocess at once).
The job checks between frames whether its request has ended (deadline passed, client gone), so
an abandoned video stops within a frame's work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from src.core.errors import InferenceTimeoutError, NoFaceDetectedError
from src.engine.preprocess import FramePreparer
from src.media.faces import Face
from src.media.tracking import follow_face
from src.media.video import DecodedVideo, VideoInfo, VideoLimits, decode_video


@dataclass(frozen=True)
class FrameCrop:
    """One sampled frame: where it is in the video, the face followed in it (None when that
    person is not found, or no face crop is made), and the crop to score (None: not scored)."""

    index: int
    time_s: float
    face: Face | None
    crop: np.ndarray | None


@dataclass(frozen=True)
class PreparedVideo:
    info: VideoInfo
    frames: list[FrameCrop]
    decode_s: float
    detect_s: float

    @property
    def crops(self) -> list[np.ndarray]:
        return [frame.crop for frame in self.frames if frame.crop is not None]


class Stop:
    """Whether a video job should stop: its deadline passed or its request was abandoned
    (set from the event loop, read on the job's thread)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._abandoned = threading.Event()

    def abandon(self) -> None:
        self._abandoned.set()

    def check(self) -> None:
        if self._abandoned.is_set() or time.perf_counter() >= self.deadline:
            raise InferenceTimeoutError("the request's deadline passed while its video was read")


# Frames are kept at most this large (longer side) once decoded: a 4K frame is shrunk to about
# 1080p, where faces are still far larger than the model's input, and 64 of them fit in memory.
FRAME_MAX_SIDE = 1920


def decoded_pixels(info: VideoInfo, n_frames: int) -> int:
    """Pixels ``n_frames`` decoded frames of this video hold (after the ``FRAME_MAX_SIDE``
    shrink): what the decode budget is asked for."""
    scale = min(1.0, FRAME_MAX_SIDE / max(info.width, info.height, 1))
    return n_frames * round(info.width * scale) * round(info.height * scale)


def prepare_video(
    data: bytes,
    n_frames: int,
    limits: VideoLimits,
    preparer: FramePreparer,
    stop: Stop,
) -> PreparedVideo:
    """Decode ``n_frames`` sampled frames of ``data`` and cut the crops to score.

    With a face crop, every face of every frame is found, one person is followed
    (:func:`follow_face`), and that person's face is cropped; frames where they are not found
    are kept with ``face=None`` and no crop. No face in any frame is a ``NoFaceDetectedError``.
    """
    stop.check()
    video: DecodedVideo = decode_video(
        data,
        n_frames,
        limits,
        deadline=stop.deadline,
        max_side=FRAME_MAX_SIDE,
        check=stop.check,
    )
    started = time.perf_counter()
    cropper = preparer.face_cropper
    if cropper is None:
        frames = []
        for frame in video.frames:
            stop.check()
            frames.append(
                FrameCrop(frame.index, frame.time_s, None, preparer.resize_crop(frame.rgb))
            )
    else:
        detections = []
        for frame in video.frames:
            stop.check()
            detections.append(cropper.faces(frame.rgb))
        followed = follow_face(detections)
        if all(face is None for face in followed):
            raise NoFaceDetectedError(
                f"no face was found in any of the {len(video.frames)} sampled frames, so the "
                "video was not scored"
            )
        frames = []
        for frame, face in zip(video.frames, followed, strict=True):
            crop = None if face is None else preparer.resize_crop(cropper.crop(frame.rgb, face))
            frames.append(FrameCrop(frame.index, frame.time_s, face, crop))
    return PreparedVideo(video.info, frames, video.decode_s, time.perf_counter() - started)
