"""Files in, verdicts out, with the service's own parts and no server.

An image goes through :class:`~src.engine.preprocess.FramePreparer` (decode, the training face
crop, resize-and-crop), a video through :func:`src.engine.video.prepare_video` (PyAV decoding of
the sampled frames, every face found, one person followed, that face cropped), exactly as
``POST /infer`` and ``POST /infer/video`` prepare them; the crops are scored by the backend
``choose_backend``/``load_backend`` pick (the checkpoint's temperature applied), and a video's
frame scores become one verdict by :func:`src.core.aggregate.aggregate`.

Files are read a chunk at a time and the crops of a chunk are scored together in batches, so a
folder of images runs at the backend's batch speed while memory stays bounded by the chunk.
A file that fails is a :class:`FileResult` with an error (the project's error code and message);
it never stops the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.core.aggregate import DEFAULT_AGGREGATE, AggregateRule, aggregate
from src.core.errors import DeepfakeError, PayloadTooLargeError, UnsupportedMediaTypeError
from src.core.labels import decide
from src.engine.preprocess import FramePreparer, face_cropper_for
from src.engine.video import PreparedVideo, Stop, prepare_video
from src.media.faces import Face
from src.media.images import ImageLimits
from src.media.video import ACCEPTED_CONTAINERS, VideoInfo, VideoLimits, sniff_container
from src.models.backends import Backend, BackendChoice, choose_backend, load_backend

logger = logging.getLogger(__name__)

IMAGE = "image"
VIDEO = "video"
UNKNOWN = "unknown"
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
# An offline run reads its user's own files: the limits only guard this machine's memory.
OFFLINE_IMAGE_LIMITS = ImageLimits(
    allowed_formats=IMAGE_FORMATS,
    max_bytes=256 * 1024 * 1024,
    max_pixels=200_000_000,
    max_side=50_000,
    min_side=16,
)
OFFLINE_MAX_VIDEO_BYTES = 2 * 1024**3
OFFLINE_MAX_VIDEO_DURATION_S = 4 * 3600.0
OFFLINE_MAX_FRAME_PIXELS = 7680 * 4320
OFFLINE_DECODE_BUDGET_S = 600.0


@dataclass(frozen=True)
class FileError:
    code: str  # the project's error code (src/core/errors.py), as the API reports it
    message: str


@dataclass(frozen=True)
class FrameResult:
    """One sampled frame of a video: its score, or None where the followed face is missing."""

    index: int
    time_s: float
    fake_prob: float | None
    face: Face | None


@dataclass(frozen=True)
class FileResult:
    path: str
    kind: str  # "image", "video", or "unknown" (not read)
    fake_prob: float | None = None
    label: str | None = None
    video: VideoInfo | None = None
    frames: tuple[FrameResult, ...] = ()
    error: FileError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def real_prob(self) -> float | None:
        return None if self.fake_prob is None else 1.0 - self.fake_prob

    @property
    def frames_scored(self) -> int:
        return sum(frame.fake_prob is not None for frame in self.frames)


@dataclass
class _Pending:
    """A file read and prepared, waiting for its crops' scores."""

    path: Path
    kind: str
    crops: list[np.ndarray]
    video: PreparedVideo | None = None
    scores: list[float] = field(default_factory=list)
    error: FileError | None = None  # scoring failed


def offline_video_limits(frames: int) -> VideoLimits:
    return VideoLimits(
        max_bytes=OFFLINE_MAX_VIDEO_BYTES,
        max_duration_s=OFFLINE_MAX_VIDEO_DURATION_S,
        max_frame_pixels=OFFLINE_MAX_FRAME_PIXELS,
        max_frames=frames,
        decode_budget_s=OFFLINE_DECODE_BUDGET_S,
    )


class Predictor:
    """Scores image and video files with one loaded backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        face_crop: str = "auto",
        frames: int = 32,
        rule: AggregateRule = DEFAULT_AGGREGATE,
        batch_size: int = 16,
        image_limits: ImageLimits = OFFLINE_IMAGE_LIMITS,
        video_limits: VideoLimits | None = None,
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.backend = backend
        self.metadata = backend.metadata
        self.frames = frames
        self.rule = rule
        self.batch_size = batch_size
        self.video_limits = video_limits or offline_video_limits(frames)
        self.preparer = FramePreparer(
            self.metadata, image_limits, face_cropper_for(self.metadata, face_crop)
        )

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    @property
    def face_crop(self) -> bool:
        return self.preparer.face_cropper is not None

    # ------------------------------------------------------------------ the run
    def predict(self, paths: Sequence[Path]) -> Iterator[FileResult]:
        """One result per path, in order; files are prepared and scored a chunk at a time."""
        for start in range(0, len(paths), self.batch_size):
            chunk = [self._prepare(path) for path in paths[start : start + self.batch_size]]
            self._score([item for item in chunk if isinstance(item, _Pending)])
            for item in chunk:
                yield item if isinstance(item, FileResult) else self._result(item)

    def predict_file(self, path: Path) -> FileResult:
        return next(self.predict([path]))

    # ------------------------------------------------------------------ steps
    def _prepare(self, path: Path) -> _Pending | FileResult:
        kind = UNKNOWN
        try:
            data = self._read(path)
            kind = VIDEO if sniff_container(data) is not None else IMAGE
            if kind == VIDEO:
                video = prepare_video(
                    data, self.frames, self.video_limits, self.preparer, Stop(math.inf)
                )
                return _Pending(path, kind, video.crops, video)
            return _Pending(path, kind, [self._image_crop(data)])
        except Exception as exc:  # one bad file never stops the run
            if isinstance(exc, UnsupportedMediaTypeError):
                kind = UNKNOWN  # neither a video container nor an image
            return FileResult(str(path), kind, error=file_error(exc))

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size
        limit = max(self.video_limits.max_bytes, self.preparer.limits.max_bytes)
        if size > limit:
            raise PayloadTooLargeError(f"the file is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()

    def _image_crop(self, data: bytes) -> np.ndarray:
        try:
            return self.preparer.from_bytes(data)
        except UnsupportedMediaTypeError:
            formats = ", ".join(sorted(self.preparer.limits.allowed_formats))
            raise UnsupportedMediaTypeError(
                f"not a recognised image ({formats}) or video ({ACCEPTED_CONTAINERS})"
            ) from None

    def _score(self, pending: Sequence[_Pending]) -> None:
        """Every crop of the chunk through the backend in batches; a batch that fails is
        retried file by file, so one file's failure stays its own."""
        crops = [crop for item in pending for crop in item.crops]
        try:
            scores = self._score_crops(crops)
        except Exception:
            if len(pending) == 1:
                raise
            for item in pending:
                self._score_alone(item)
            return
        position = 0
        for item in pending:
            item.scores = scores[position : position + len(item.crops)]
            position += len(item.crops)

    def _score_alone(self, item: _Pending) -> None:
        try:
            item.scores = self._score_crops(item.crops)
        except Exception as exc:  # kept on the item, reported as its error
            item.error = FileError("inference_error", f"{type(exc).__name__}: {exc}")

    def _score_crops(self, crops: Sequence[np.ndarray]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(crops), self.batch_size):
            batch = crops[start : start + self.batch_size]
            scores += [score.fake_prob for score in self.backend.score(batch)]
        return scores

    def _result(self, item: _Pending) -> FileResult:
        if item.error is not None:
            return FileResult(str(item.path), item.kind, error=item.error)
        if item.video is None:
            (fake_prob,) = item.scores
            return self._verdict(item.path, IMAGE, fake_prob)
        scores = iter(item.scores)
        frames = tuple(
            FrameResult(
                frame.index,
                frame.time_s,
                None if frame.crop is None else next(scores),
                frame.face,
            )
            for frame in item.video.frames
        )
        scored = [frame.fake_prob for frame in frames if frame.fake_prob is not None]
        result = self._verdict(item.path, VIDEO, aggregate(scored, self.rule))
        return FileResult(
            result.path,
            VIDEO,
            result.fake_prob,
            result.label,
            video=item.video.info,
            frames=frames,
        )

    def _verdict(self, path: Path, kind: str, fake_prob: float) -> FileResult:
        return FileResult(str(path), kind, fake_prob, decide(fake_prob, self.threshold))


def file_error(exc: BaseException) -> FileError:
    """The error a file reports: the project's code and message, or what the system said."""
    if isinstance(exc, DeepfakeError):
        return FileError(exc.code, exc.message)
    if isinstance(exc, FileNotFoundError):
        return FileError("not_found", "no such file")
    if isinstance(exc, OSError):
        return FileError("unreadable_file", exc.strerror or str(exc))
    logger.exception("unexpected error while scoring a file")
    return FileError("internal_error", f"{type(exc).__name__}: {exc}")


def load_predictor(
    checkpoint: str | Path,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    face_crop: str = "auto",
    frames: int = 32,
    rule: AggregateRule = DEFAULT_AGGREGATE,
    batch_size: int = 16,
) -> tuple[Predictor, BackendChoice]:
    """A :class:`Predictor` over the backend that ``choose_backend`` picks for ``checkpoint`` on
    a resolved ``device``, as the service's start-up picks it."""
    choice = choose_backend(backend, checkpoint, device)
    loaded = load_backend(choice.name, checkpoint, device=device, threads=threads)
    predictor = Predictor(
        loaded, face_crop=face_crop, frames=frames, rule=rule, batch_size=batch_size
    )
    return predictor, choice
