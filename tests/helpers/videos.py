"""Video bytes made in memory with PyAV, for the decoding, tracking and serving tests.

Every frame can carry its own number as a *stamp* (two flat grey blocks that survive lossy
coding), so a test can tell exactly which frame the decoder handed back.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import numpy as np
from skimage import data as skdata

FrameMaker = Callable[[int, int, int], np.ndarray]  # (index, width, height) -> RGB uint8

# The grey levels of a stamp: a step wide enough that lossy coding never moves one to the next.
_STAMP_LOW, _STAMP_STEP, _STAMP_LEVELS = 24, 10, 20

# container name -> (PyAV muxer, video codec, pixel format) of the usual case.
CONTAINERS: dict[str, tuple[str, str, str]] = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "mov": ("mov", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv": ("matroska", "libx264", "yuv420p"),
    "avi": ("avi", "mjpeg", "yuvj420p"),
}
_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "ultrafast", "threads": "1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
}


def stamp_of(index: int) -> tuple[int, int]:
    """The two grey levels that stamp frame ``index``."""
    if not 0 <= index < _STAMP_LEVELS**2:
        raise ValueError(f"a stamp holds 0..{_STAMP_LEVELS**2 - 1}, not {index}")
    high, low = divmod(index, _STAMP_LEVELS)
    return _STAMP_LOW + high * _STAMP_STEP, _STAMP_LOW + low * _STAMP_STEP


def stamped_frame(index: int, width: int, height: int) -> np.ndarray:
    """A frame whose left half and right half are flat greys that encode ``index``."""
    high, low = stamp_of(index)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = high
    frame[:, width // 2 :] = low
    return frame


def read_stamp(rgb: np.ndarray) -> int:
    """The frame number a :func:`stamped_frame` carries (read from the middle of each half)."""
    h, w = rgb.shape[:2]
    levels = []
    for x0, x1 in ((w // 8, 3 * w // 8), (5 * w // 8, 7 * w // 8)):
        grey = float(rgb[h // 4 : 3 * h // 4, x0:x1].mean())
        levels.append(round((grey - _STAMP_LOW) / _STAMP_STEP))
    return levels[0] * _STAMP_LEVELS + levels[1]


def video_bytes(
    container: str = "mp4",
    *,
    codec: str | None = None,
    pix_fmt: str | None = None,
    size: tuple[int, int] = (128, 96),
    fps: int = 10,
    frames: int = 20,
    maker: FrameMaker = stamped_frame,
    gop: int | None = None,
    audio: bool = False,
    muxer_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
) -> bytes:
    """An encoded video: ``frames`` frames at ``fps`` of ``maker``'s pictures, ``size`` (w, h).

    ``container`` is a key of :data:`CONTAINERS` (its usual codec unless ``codec`` is given);
    ``gop`` sets the distance between key frames; ``audio`` adds a silent AAC track;
    ``codec_options`` replace the encoder's (fast, single-thread) defaults.
    """
    muxer, default_codec, default_pix = CONTAINERS[container]
    codec = codec or default_codec
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer, options=muxer_options or {}) as out:
        options = _CODEC_OPTIONS.get(codec, {}) if codec_options is None else codec_options
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt or (default_pix if codec == default_codec else "yuv420p")
        if gop is not None:
            stream.codec_context.gop_size = gop
        sound = _add_silence(out, frames / fps) if audio else None
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(maker(i, *size), format="rgb24")
            picture.pts = i
            picture.time_base = Fraction(1, fps)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
        if sound is not None:
            sound()
    return buffer.getvalue()


def _add_silence(out: av.container.OutputContainer, seconds: float) -> Callable[[], None]:
    """Adds a silent AAC stream; the returned function writes its samples."""
    rate = 16000
    stream = out.add_stream("aac", rate=rate)
    stream.layout = "mono"

    def write() -> None:
        samples = int(seconds * rate)
        chunk = 1024
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, n), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode())

    return write


def audio_only_bytes(seconds: float = 1.0) -> bytes:
    """An MP4 (M4A) with one AAC track and no video."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        _add_silence(out, seconds)()
    return buffer.getvalue()


def undecodable_bytes(frames: int = 10) -> bytes:
    """A well-formed MKV whose H.264 track holds junk packets: no frame decodes."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            packet = av.Packet(b"\x00\x00\x00\x01\x09\xf0" + bytes(200))
            packet.stream = stream
            packet.time_base = Fraction(1, 10)
            packet.pts = packet.dts = i
            packet.is_keyframe = True
            out.mux(packet)
    return buffer.getvalue()


def corrupted(data: bytes, seed: int = 0) -> bytes:
    """``data`` with its middle third overwritten by random bytes (the header kept)."""
    out = bytearray(data)
    start, end = len(out) // 3, 2 * len(out) // 3
    out[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, np.uint8).tobytes()
    return bytes(out)


def truncated(data: bytes, fraction: float) -> bytes:
    """The first ``fraction`` of ``data``: an upload cut off part-way."""
    return data[: int(len(data) * fraction)]


# ------------------------------------------------------------------------------ faces


def _astronaut_face() -> np.ndarray:
    """The astronaut's head and shoulders from ``skimage.data.astronaut()`` (a real photo)."""
    return np.ascontiguousarray(skdata.astronaut()[20:260, 130:330])


def face_frames(faces: int = 1, drift: int = 3) -> FrameMaker:
    """Frames with ``faces`` (0, 1 or 2) real faces on a textured background, moving by
    ``drift`` px a frame. With two faces, the second is smaller (about 0.6x) and on the right."""
    if faces not in (0, 1, 2):
        raise ValueError("faces must be 0, 1 or 2")
    head = _astronaut_face()
    small = cv2.resize(head, (120, 144), interpolation=cv2.INTER_AREA)  # 0.6x

    def make(index: int, width: int, height: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        frame = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
        shift = (index * drift) % max(1, width // 8)
        if faces >= 1:
            _paste(frame, head, 8 + shift, (height - head.shape[0]) // 2)
        if faces == 2:
            _paste(frame, small, width - small.shape[1] - 8 - shift, 12)
        return frame

    return make


def _paste(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h = min(patch.shape[0], frame.shape[0] - y)
    w = min(patch.shape[1], frame.shape[1] - x)
    frame[y : y + h, x : x + w] = patch[:h, :w]


def face_video_bytes(faces: int = 1, frames: int = 10, fps: int = 5) -> bytes:
    """An H.264 MP4 of :func:`face_frames` at 400x280: room for the head and a smaller one."""
    return video_bytes("mp4", size=(400, 280), fps=fps, frames=frames, maker=face_frames(faces))
