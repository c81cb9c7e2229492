"""Video bytes in, checked frames sampled over the duration out, or a typed error that says why.

The container is recognised from the bytes (never the file name) and the demuxer is then named
explicitly, so FFmpeg never probes an upload into some other format (playlists, image
sequences). Decoding is PyAV (the FFmpeg bindings) on an in-memory buffer: no temporary file.

Frames are sampled at the centres of ``n`` equal segments of the duration, the same rule as
:func:`src.media.frames.sample_frame_indices`. One pass over the packets (demuxing only, no
decoding: cheap) finds every frame's time and the key frames; then each wanted frame is
reached by seeking to its key frame, or, when it lies in the GOP being decoded, by decoding
on, so no GOP is decoded twice and frames far from any target are never converted to RGB.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from src.core.errors import (
    DeepfakeError,
    EmptyUploadError,
    InferenceTimeoutError,
    InvalidVideoError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    VideoLimitError,
)

__all__ = [
    "ACCEPTED_CONTAINERS",
    "SUPPORTED_CODECS",
    "DecodedVideo",
    "SampledFrame",
    "VideoInfo",
    "VideoLimits",
    "decode_video",
    "probe_video",
    "sample_times",
    "sniff_container",
]

# Container kind -> FFmpeg demuxer. WebM is Matroska with fewer codecs; one demuxer reads both.
_DEMUXERS = {"mp4": "mov", "webm": "matroska", "avi": "avi"}
_NAMES = {"mp4": "MP4/MOV", "webm": "WebM/MKV", "avi": "AVI"}
ACCEPTED_CONTAINERS = ", ".join(_NAMES.values())
# The codecs cameras, phones and the web use; FFmpeg's other decoders (hundreds) stay unreachable.
SUPPORTED_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "mpeg2video", "mpeg1video"}
)
# A frame starting at most this far (seconds) after a time still counts as on screen at it.
_TIME_EPSILON = 1e-3
# A declared duration longer than the frames by more than this many frame periods (and more
# than _TRUNCATION_SHARE of the duration) means frames are missing: a cut-off upload.
_TRUNCATION_FRAMES = 3
_TRUNCATION_SHARE = 0.05
_MAX_THREADS = 2


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 600.0
    max_frame_pixels: int = 3840 * 2160
    max_frames: int = 64  # most frames one request may sample
    decode_budget_s: float = 20.0  # wall time allowed for decoding one video


@dataclass(frozen=True)
class VideoInfo:
    container: str  # "mp4", "webm" or "avi" (see sniff_container)
    codec: str
    duration_s: float
    fps: float
    width: int  # the coded frame size (a phone's rotation flag is applied to the frames only)
    height: int
    frame_count: int | None  # None where neither the header nor a scan counted the frames


@dataclass(frozen=True)
class SampledFrame:
    index: int  # frame number in the video (time_s * fps, rounded)
    time_s: float  # presentation time of the decoded frame, from the stream's start
    rgb: np.ndarray  # (H, W, 3) uint8, display orientation


@dataclass(frozen=True)
class DecodedVideo:
    info: VideoInfo
    frames: list[SampledFrame]  # in time order; at most n_frames; duplicates removed
    decode_s: float


def sniff_container(data: bytes) -> str | None:
    """``"mp4"`` (MP4/MOV/ISO-BMFF), ``"webm"`` (WebM and MKV: EBML), ``"avi"``, else None.

    From the bytes alone: an ISO-BMFF ``ftyp`` box, the EBML magic, or a ``RIFF....AVI `` header.
    """
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def sample_times(duration_s: float, n: int) -> list[float]:
    """``n`` times spread uniformly over ``[0, duration_s)``: the centres of ``n`` equal
    segments, which keeps away from the first and last instants some files cannot decode."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if duration_s <= 0:
        return [0.0] * n
    return [(i + 0.5) * duration_s / n for i in range(n)]


def probe_video(data: bytes, limits: VideoLimits) -> VideoInfo:
    """What the video is, from its header (and a packet scan only when the header gives no
    duration); raises the same errors as :func:`decode_video` for a video past a limit."""
    _check_bytes(data, limits)
    budget = _Clock(limits.decode_budget_s, None)
    with _open(data) as opened:
        opened.check_header(limits)
        if opened.declared_duration is None:
            opened.scan(limits, budget)
        return opened.info()


def decode_video(
    data: bytes,
    n_frames: int,
    limits: VideoLimits,
    *,
    deadline: float | None = None,
    max_side: int | None = None,
    check: Callable[[], None] | None = None,
) -> DecodedVideo:
    """``n_frames`` frames sampled uniformly over the video (fewer when it has fewer frames).

    ``deadline`` is a ``time.perf_counter()`` value; past it the work stops with
    :class:`InferenceTimeoutError`. ``max_side``, when given, shrinks frames whose longer side
    exceeds it as they are converted to RGB (fewer bytes per frame; sampling is unchanged).
    ``check``, when given, is called between frames (and every 64 packets of the scan): it
    raises a :class:`DeepfakeError` to stop the work, e.g. when the request was abandoned.
    """
    started = time.perf_counter()
    if not 1 <= n_frames <= limits.max_frames:
        raise VideoLimitError(f"frames must be between 1 and {limits.max_frames}, got {n_frames}")
    _check_bytes(data, limits)
    clock = _Clock(limits.decode_budget_s, deadline, check)
    with _open(data) as opened:
        opened.check_header(limits)
        opened.scan(limits, clock)
        info = opened.info()
        wanted = opened.plan(sample_times(opened.extent_s, n_frames))
        frames = list(opened.decode(wanted, clock, max_side, limits.max_frame_pixels))
    if not frames:
        raise InvalidVideoError("the video holds no decodable frames")
    return DecodedVideo(info, frames, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------


def _check_bytes(data: bytes, limits: VideoLimits) -> None:
    if not data:
        raise EmptyUploadError()
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(f"the upload exceeds the {limits.max_bytes}-byte limit")
    if sniff_container(data) is None:
        raise UnsupportedMediaTypeError(
            f"the upload is not a recognised video container; accepted: {ACCEPTED_CONTAINERS}"
        )


class _Clock:
    """The decode budget (a :class:`VideoLimitError`) and the request's deadline (a timeout)."""

    def __init__(
        self, budget_s: float, deadline: float | None, check: Callable[[], None] | None = None
    ) -> None:
        self.budget_s = budget_s
        self.budget_end = time.perf_counter() + budget_s
        self.deadline = deadline
        self.caller_check = check

    def check(self) -> None:
        if self.caller_check is not None:
            self.caller_check()
        now = time.perf_counter()
        if self.deadline is not None and now > self.deadline:
            raise InferenceTimeoutError("the request's time ran out while the video was decoded")
        if now > self.budget_end:
            raise VideoLimitError(
                f"decoding the video took longer than its {self.budget_s:g} s budget"
            )


def _open(data: bytes) -> _OpenVideo:
    kind = sniff_container(data)
    assert kind is not None  # _check_bytes ran first
    try:
        container = av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[kind])
    except Exception as exc:  # FFmpeg reports a bad header as many OSError/ValueError kinds
        raise InvalidVideoError(
            f"the {_NAMES[kind]} container cannot be read: it is corrupt or truncated"
        ) from exc
    try:
        return _OpenVideo(kind, container)
    except BaseException:
        container.close()
        raise


def _stream_seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _parse_clock(text: str | None) -> float | None:
    """Matroska's per-track ``DURATION`` tag, ``HH:MM:SS.fraction``, in seconds."""
    if not text:
        return None
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


class _OpenVideo:
    """An opened container and its video stream: header facts, the packet scan, the decode."""

    def __init__(self, kind: str, container: av.container.InputContainer) -> None:
        self.kind = kind
        self.container = container
        self.stream = self._video_stream()
        ctx = self.stream.codec_context
        if ctx is None:  # a codec this FFmpeg build has no decoder for
            raise InvalidVideoError("the video codec is not supported")
        self.codec = ctx.codec.canonical_name  # the format, not the decoder ("av1", not "libdav1d")
        if self.codec not in SUPPORTED_CODECS:
            raise InvalidVideoError(
                f"the video codec {self.codec!r} is not supported; accepted: "
                + ", ".join(sorted(SUPPORTED_CODECS))
            )
        self.width, self.height = int(ctx.width or 0), int(ctx.height or 0)
        if self.width <= 0 or self.height <= 0:
            raise InvalidVideoError("the video stream declares no frame size")
        self.time_base = self.stream.time_base or Fraction(1, 1000)
        self.start_pts = self.stream.start_time or 0
        self.declared_duration = self._declared_duration()
        self.frame_times: list[float] | None = None  # from the scan, seconds from the start
        self.frame_pts: list[int] = []
        self.key_pts: list[int] = []
        self.extent_s = self.declared_duration or 0.0
        ctx.thread_type = "AUTO"
        ctx.thread_count = _MAX_THREADS

    def __enter__(self) -> _OpenVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def _video_stream(self) -> av.video.stream.VideoStream:
        for stream in self.container.streams.video:
            if not stream.disposition & av.stream.Disposition.attached_pic:  # not cover art
                return stream
        raise InvalidVideoError("the file holds no video stream")

    def _declared_duration(self) -> float | None:
        own = _stream_seconds(self.stream.duration, self.stream.time_base)
        if own is None:
            own = _parse_clock(self.stream.metadata.get("DURATION"))
        if own is None and len(self.container.streams) == 1 and self.container.duration:
            own = self.container.duration / av.time_base  # the whole file is this stream
        return own if own and own > 0 else None

    @property
    def fps(self) -> float:
        rate = self.stream.average_rate or self.stream.guessed_rate
        if rate and rate > 0:
            return float(rate)
        if self.frame_times and self.extent_s > 0:
            return len(self.frame_times) / self.extent_s
        return 0.0

    def info(self) -> VideoInfo:
        count = len(self.frame_times) if self.frame_times is not None else self.stream.frames
        return VideoInfo(
            container=self.kind,
            codec=self.codec,
            duration_s=round(self.extent_s, 6),
            fps=round(self.fps, 6),
            width=self.width,
            height=self.height,
            frame_count=count or None,
        )

    def check_header(self, limits: VideoLimits) -> None:
        if self.width * self.height > limits.max_frame_pixels:
            raise VideoLimitError(
                f"frames are {self.width}x{self.height}; the limit is "
                f"{limits.max_frame_pixels} pixels a frame"
            )
        if self.declared_duration is not None and self.declared_duration > limits.max_duration_s:
            raise VideoLimitError(
                f"the video lasts {self.declared_duration:.1f} s; the limit is "
                f"{limits.max_duration_s:g} s"
            )

    # -- the packet scan: every frame's time and the key frames, without decoding ------------

    def scan(self, limits: VideoLimits, clock: _Clock) -> None:
        pts_seen: list[int] = []
        keys: list[int] = []
        last_end = 0
        try:
            for k, packet in enumerate(self.container.demux(self.stream)):
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    continue  # the flushing packet at the end
                pts_seen.append(pts)
                if packet.is_keyframe:
                    keys.append(pts)
                last_end = max(last_end, pts + (packet.duration or 0))
                if k % 64 == 0:
                    clock.check()
                    self._check_running_duration(pts, limits)
        except DeepfakeError:  # a limit, the deadline, or the caller's check
            raise
        except Exception as exc:
            raise InvalidVideoError("the video's data cannot be read: it is corrupt") from exc
        if not pts_seen:
            raise InvalidVideoError("the video holds no frames")
        self._check_running_duration(max(pts_seen), limits)
        self.frame_pts = sorted(set(pts_seen))
        if self.stream.start_time is None:
            self.start_pts = self.frame_pts[0]
        self.key_pts = sorted(set(keys)) or self.frame_pts[:1]
        self.frame_times = [float((p - self.start_pts) * self.time_base) for p in self.frame_pts]
        period = self._frame_period()
        end = max(
            float((last_end - self.start_pts) * self.time_base), self.frame_times[-1] + period
        )
        self._check_complete(end, period)
        self.extent_s = self.declared_duration or end

    def _check_running_duration(self, pts: int, limits: VideoLimits) -> None:
        seconds = float((pts - self.start_pts) * self.time_base)
        if seconds > limits.max_duration_s:
            raise VideoLimitError(
                f"the video lasts more than {limits.max_duration_s:g} s, the limit"
            )

    def _frame_period(self) -> float:
        rate = self.stream.average_rate or self.stream.guessed_rate
        if rate and rate > 0:
            return float(1 / rate)
        times = self.frame_times or []
        if len(times) > 1:
            return (times[-1] - times[0]) / (len(times) - 1)
        return 0.0

    def _check_complete(self, end: float, period: float) -> None:
        declared = self.declared_duration
        if declared is None:
            return
        missing = declared - end
        if missing > max(_TRUNCATION_FRAMES * period, _TRUNCATION_SHARE * declared):
            raise InvalidVideoError(
                f"the video is truncated or corrupt: it declares {declared:.2f} s but its "
                f"frames end at {end:.2f} s"
            )

    # -- the decode ------------------------------------------------------------------------

    def plan(self, times: list[float]) -> list[int]:
        """The pts of the frame on screen at each time (the last one that starts at or before
        it), each once: with more times than frames, every frame."""
        assert self.frame_times is not None
        wanted: list[int] = []
        for t in times:
            i = max(0, bisect.bisect_right(self.frame_times, t + _TIME_EPSILON) - 1)
            if not wanted or self.frame_pts[i] != wanted[-1]:
                wanted.append(self.frame_pts[i])
        return wanted

    def decode(
        self, wanted: list[int], clock: _Clock, max_side: int | None, max_pixels: int
    ) -> Iterator[SampledFrame]:
        """The frames with the ``wanted`` pts (or the first after each), in order. A target
        in the GOP being decoded is reached by decoding on; any other by a seek to its key
        frame. Frames the decoder drops are missing from the answer (it says how many came)."""
        fps = self.fps
        frames = self._frames()
        position: int | None = None  # pts of the last frame decoded
        for target in wanted:
            if position is not None and position >= target:
                continue  # the frame already given is the first at or after this time too
            key = self.key_pts[max(0, bisect.bisect_right(self.key_pts, target) - 1)]
            if position is None or key > position:
                self.container.seek(key, stream=self.stream)
                frames = self._frames()
            for frame in frames:
                clock.check()
                position = frame.pts if frame.pts is not None else position
                if frame.pts is not None and frame.pts >= target:
                    yield self._sampled(frame, max_side, fps, max_pixels)
                    break
            else:
                return  # the stream ended early: the frames found so far are the answer

    def _frames(self) -> Iterator[av.VideoFrame]:
        try:
            yield from self.container.decode(self.stream)
        except Exception as exc:
            raise InvalidVideoError(
                "a frame of the video cannot be decoded: it is corrupt"
            ) from exc

    def _sampled(
        self, frame: av.VideoFrame, max_side: int | None, fps: float, max_pixels: int
    ) -> SampledFrame:
        if frame.width * frame.height > max_pixels:  # the size changed inside the stream
            raise VideoLimitError(
                f"a frame is {frame.width}x{frame.height}; the limit is {max_pixels} pixels a frame"
            )
        time_s = float(((frame.pts or 0) - self.start_pts) * self.time_base)
        return SampledFrame(index=round(time_s * fps), time_s=time_s, rgb=_to_rgb(frame, max_side))


def _to_rgb(frame: av.VideoFrame, max_side: int | None) -> np.ndarray:
    """RGB in display orientation (a phone's rotation flag applied), shrunk to ``max_side``."""
    width, height = frame.width, frame.height
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
    rgb: np.ndarray = frame.to_ndarray(format="rgb24", width=width, height=height)
    turns = round((frame.rotation or 0) / 90) % 4
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
    return rgb
