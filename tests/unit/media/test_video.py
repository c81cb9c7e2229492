"""Video decoding from the bytes (src/media/video.py): containers, sampling, seeking, limits."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from typing import Any

import av
import pytest

from src.core import errors
from src.media import video as video_module
from src.media.frames import sample_frame_indices
from src.media.video import (
    DecodedVideo,
    VideoLimits,
    decode_video,
    probe_video,
    sample_times,
    sniff_container,
)
from tests.helpers.images import image_bytes
from tests.helpers.videos import (
    CONTAINERS,
    audio_only_bytes,
    corrupted,
    read_stamp,
    stamp_of,
    truncated,
    undecodable_bytes,
    video_bytes,
)

LIMITS = VideoLimits()


def stamps(decoded: DecodedVideo) -> list[int]:
    return [read_stamp(f.rgb) for f in decoded.frames]


# ------------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    ("container", "kind"),
    [("mp4", "mp4"), ("mov", "mp4"), ("webm", "webm"), ("mkv", "webm"), ("avi", "avi")],
)
def test_sniffs_each_container_from_its_bytes(container: str, kind: str) -> None:
    assert sniff_container(video_bytes(container, frames=2)) == kind


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 64, image_bytes("JPEG"), image_bytes("PNG"), b"RIFF\x00\x00\x00\x00WAVE"],
)
def test_anything_else_is_not_a_video_container(data: bytes) -> None:
    assert sniff_container(data) is None


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_each_container_decodes_the_frames_at_the_sampled_times(container: str) -> None:
    decoded = decode_video(video_bytes(container, frames=30, fps=10, gop=10), 8, LIMITS)
    expected = sample_frame_indices(30, num_frames=8)
    assert stamps(decoded) == expected
    assert [f.index for f in decoded.frames] == expected
    assert [f.time_s for f in decoded.frames] == pytest.approx([i / 10 for i in expected])
    info = decoded.info
    assert (info.width, info.height, info.fps) == (128, 96, 10.0)
    assert info.duration_s == pytest.approx(3.0)
    assert info.frame_count == 30
    assert info.codec == {"webm": "vp9", "avi": "mjpeg"}.get(container, "h264")
    assert (
        decoded.frames[0].rgb.shape == (96, 128, 3) and decoded.frames[0].rgb.dtype.name == "uint8"
    )
    assert decoded.decode_s > 0


@pytest.mark.parametrize(
    ("container", "encoder", "codec"),
    [
        ("mp4", "libx265", "hevc"),
        ("mkv", "libsvtav1", "av1"),
        ("webm", "libvpx", "vp8"),
        ("avi", "mpeg4", "mpeg4"),
        ("mkv", "mpeg2video", "mpeg2video"),
    ],
)
def test_the_other_supported_codecs_decode(container: str, encoder: str, codec: str) -> None:
    options = {"preset": "ultrafast"} if encoder == "libx265" else {}
    data = video_bytes(container, codec=encoder, frames=20, codec_options=options)
    decoded = decode_video(data, 4, LIMITS)
    assert decoded.info.codec == codec  # the format, whichever decoder FFmpeg picked
    assert stamps(decoded) == sample_frame_indices(20, num_frames=4)


def test_b_frames_and_an_audio_track_change_nothing() -> None:
    # x264's default preset: B-frames, so frames arrive out of presentation order
    data = video_bytes(
        "mp4", frames=40, gop=12, audio=True, codec_options={"preset": "medium", "threads": "1"}
    )
    with av.open(io.BytesIO(data)) as container:
        assert any(p.pts != p.dts for p in container.demux(video=0) if p.pts is not None)
    decoded = decode_video(data, 5, LIMITS)
    assert stamps(decoded) == sample_frame_indices(40, num_frames=5)


def test_more_frames_asked_than_the_video_has_gives_each_frame_once() -> None:
    decoded = decode_video(video_bytes("mp4", frames=5), 20, LIMITS)
    assert stamps(decoded) == [0, 1, 2, 3, 4]
    assert [f.index for f in decoded.frames] == [0, 1, 2, 3, 4]


def test_a_stream_without_a_declared_duration_is_measured_from_its_packets() -> None:
    live = video_bytes("webm", frames=30, muxer_options={"live": "1"})  # no duration, no cues
    info = probe_video(live, LIMITS)
    assert info.duration_s == pytest.approx(3.0)
    assert stamps(decode_video(live, 4, LIMITS)) == sample_frame_indices(30, num_frames=4)


def test_sample_times_are_the_centres_of_equal_segments() -> None:
    assert sample_times(4.0, 4) == [0.5, 1.5, 2.5, 3.5]
    assert sample_times(0.0, 2) == [0.0, 0.0]
    with pytest.raises(ValueError):
        sample_times(1.0, 0)


def test_probe_reads_the_header_without_decoding() -> None:
    info = probe_video(video_bytes("mov", frames=12, fps=6, size=(64, 48)), LIMITS)
    assert (info.container, info.codec, info.width, info.height) == ("mp4", "h264", 64, 48)
    assert info.duration_s == pytest.approx(2.0) and info.fps == 6.0 and info.frame_count == 12


def test_max_side_shrinks_frames_as_they_are_converted() -> None:
    decoded = decode_video(video_bytes("mp4", frames=4, size=(256, 128)), 2, LIMITS, max_side=64)
    assert decoded.frames[0].rgb.shape == (32, 64, 3)
    assert decoded.info.width == 256  # the video's own size is reported


def _rotated_90(data: bytes) -> bytes:
    """The MP4 with its track matrix set to a 90-degree turn, as a phone held upright writes."""
    out = bytearray(data)
    tkhd = out.index(b"tkhd")
    assert out[tkhd + 4] == 0  # version 0: the matrix is 44 bytes after the box type
    struct.pack_into(">9i", out, tkhd + 44, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return bytes(out)


def test_a_phone_rotation_flag_is_applied_to_the_frames() -> None:
    decoded = decode_video(_rotated_90(video_bytes("mp4", frames=4, size=(128, 96))), 1, LIMITS)
    rgb = decoded.frames[0].rgb
    assert rgb.shape == (128, 96, 3)  # upright: taller than wide
    high, low = stamp_of(decoded.frames[0].index)
    # turned clockwise: the frame's left half (the high grey) is now on top
    assert abs(float(rgb[16:48].mean()) - high) < 4 and abs(float(rgb[80:112].mean()) - low) < 4


# ---------------------------------------------------------------------------- seeking


class _DecodeCounter:
    """Counts the decoder restarts (one per seek) and the frames decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.restarts = 0
        self.frames = 0
        original = video_module._OpenVideo._frames

        def counting(opened: Any) -> Iterator[Any]:
            self.restarts += 1
            for frame in original(opened):
                self.frames += 1
                yield frame

        monkeypatch.setattr(video_module._OpenVideo, "_frames", counting)


def test_far_targets_are_reached_by_seeking_not_by_decoding_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = video_bytes("mp4", frames=120, gop=10)
    counter = _DecodeCounter(monkeypatch)
    decoded = decode_video(data, 4, LIMITS)
    assert stamps(decoded) == sample_frame_indices(120, num_frames=4)  # 15, 45, 75, 105
    assert counter.restarts == 4
    assert counter.frames <= 4 * 10  # at most one GOP per target, never all 120 frames


def test_targets_in_the_gop_being_decoded_are_reached_without_seeking_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = video_bytes("mp4", frames=60, gop=60)  # one key frame
    counter = _DecodeCounter(monkeypatch)
    decoded = decode_video(data, 6, LIMITS)
    assert stamps(decoded) == sample_frame_indices(60, num_frames=6)
    assert counter.restarts == 1
    assert counter.frames <= 60


# --------------------------------------------------------------------------- refusals


def _refused(data: bytes, error: type[errors.DeepfakeError], **kwargs: Any) -> str:
    limits = kwargs.pop("limits", LIMITS)
    n_frames = kwargs.pop("n_frames", 4)
    with pytest.raises(error) as caught:
        decode_video(data, n_frames, limits, **kwargs)
    message = caught.value.message
    assert "Errno" not in message and "<none>" not in message, message  # safe to show
    return message


def test_empty_upload_is_refused() -> None:
    _refused(b"", errors.EmptyUploadError)


def test_an_upload_over_the_byte_limit_is_413_before_anything_is_read() -> None:
    data = video_bytes("mp4", frames=4)
    assert _refused(data, errors.PayloadTooLargeError, limits=VideoLimits(max_bytes=len(data) - 1))


@pytest.mark.parametrize("data", [image_bytes("JPEG"), b"plain text, not a video" * 4])
def test_a_non_video_is_415_and_the_message_lists_the_accepted_containers(data: bytes) -> None:
    message = _refused(data, errors.UnsupportedMediaTypeError)
    assert "MP4/MOV" in message and "WebM/MKV" in message and "AVI" in message


def test_a_file_with_no_video_stream_is_an_invalid_video() -> None:
    message = _refused(audio_only_bytes(), errors.InvalidVideoError)
    assert "no video stream" in message


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "mkv", "avi"])
def test_a_truncated_file_is_an_invalid_video(container: str) -> None:
    data = truncated(video_bytes(container, frames=30, gop=10), 0.5)
    with pytest.raises(errors.InvalidVideoError) as caught:
        decode_video(data, 8, LIMITS)
    assert not isinstance(caught.value, errors.VideoLimitError)
    assert caught.value.code == "invalid_video"


def test_a_matroska_file_cut_near_its_end_is_reported_as_truncated() -> None:
    message = _refused(truncated(video_bytes("mkv", frames=30), 0.85), errors.InvalidVideoError)
    assert "truncated" in message


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_a_file_corrupt_in_the_middle_is_an_invalid_video(container: str) -> None:
    _refused(corrupted(video_bytes(container, frames=30, gop=10)), errors.InvalidVideoError)


def test_corrupt_bytes_after_a_valid_signature_are_an_invalid_video() -> None:
    data = video_bytes("mkv", frames=4)
    _refused(data[:40] + bytes(range(256)) * 8, errors.InvalidVideoError)
    _refused(b"\x00\x00\x00\x18ftypisom" + b"\xff" * 500, errors.InvalidVideoError)


def test_a_video_whose_frames_do_not_decode_is_an_invalid_video() -> None:
    _refused(undecodable_bytes(), errors.InvalidVideoError)


def test_an_unsupported_codec_is_an_invalid_video_naming_it() -> None:
    data = video_bytes("mkv", codec="ffv1", pix_fmt="yuv420p", frames=3)
    message = _refused(data, errors.InvalidVideoError)
    assert "ffv1" in message and "h264" in message


@pytest.mark.parametrize("n_frames", [0, -1, LIMITS.max_frames + 1])
def test_frames_outside_the_limit_are_refused(n_frames: int) -> None:
    message = _refused(video_bytes("mp4", frames=2), errors.VideoLimitError, n_frames=n_frames)
    assert str(LIMITS.max_frames) in message


def test_a_video_longer_than_the_limit_is_refused_from_its_header() -> None:
    data = video_bytes("mp4", frames=40, fps=10)
    limits = VideoLimits(max_duration_s=3.0)
    message = _refused(data, errors.VideoLimitError, limits=limits)
    assert "4.0 s" in message and "3 s" in message
    with pytest.raises(errors.VideoLimitError):
        probe_video(data, limits)


def test_a_stream_without_a_duration_is_held_to_the_limit_by_its_packets() -> None:
    live = video_bytes("webm", frames=40, fps=10, muxer_options={"live": "1"})
    _refused(live, errors.VideoLimitError, limits=VideoLimits(max_duration_s=2.0))


def test_frames_larger_than_the_pixel_limit_are_refused_before_decoding() -> None:
    data = video_bytes("mp4", frames=2, size=(128, 96))
    message = _refused(data, errors.VideoLimitError, limits=VideoLimits(max_frame_pixels=128 * 95))
    assert "128x96" in message
    assert probe_video(data, VideoLimits(max_frame_pixels=128 * 96)).width == 128


def test_the_decode_budget_is_enforced() -> None:
    data = video_bytes("mp4", frames=60)
    message = _refused(data, errors.VideoLimitError, limits=VideoLimits(decode_budget_s=0.0))
    assert "budget" in message


def test_a_past_deadline_is_a_timeout() -> None:
    data = video_bytes("mp4", frames=60)
    _refused(data, errors.InferenceTimeoutError, deadline=time.perf_counter() - 1.0)


def test_the_callers_check_stops_the_decode() -> None:
    calls = []

    def abandoned() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise errors.ClientDisconnectedError()

    _refused(video_bytes("mp4", frames=200), errors.ClientDisconnectedError, check=abandoned)
    assert len(calls) == 3


def test_video_errors_are_input_errors_with_their_codes() -> None:
    assert issubclass(errors.InvalidVideoError, errors.InputError)
    assert issubclass(errors.VideoLimitError, errors.InvalidVideoError)
    assert errors.InvalidVideoError.code == "invalid_video"
    assert errors.VideoLimitError.code == "video_limit_exceeded"
