"""The demo videos (src/data/make_videos.py) and the committed examples/*.mp4."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from src.data.make_demo import split_identities
from src.data.make_videos import Shot, build_videos, demo_identity, main, render_frames
from src.data.sources import load_identities
from src.media.video import VideoLimits, probe_video
from tests.helpers import REPO_ROOT

SMALL = Shot(width=256, height=192, frames=6, zoom=(0.55, 0.65))


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(io.BytesIO(path.read_bytes())) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_building_twice_gives_identical_frames(tmp_path: Path) -> None:
    first = build_videos(tmp_path / "a", seed=0, shot=SMALL)
    second = build_videos(tmp_path / "b", seed=0, shot=SMALL)
    assert [p.name for p in first] == ["real_0.mp4", "fake_0.mp4"]
    for a, b in zip(first, second, strict=True):
        frames_a, frames_b = decoded_frames(a), decoded_frames(b)
        assert len(frames_a) == SMALL.frames
        assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b, strict=True))


def test_the_face_is_a_held_out_identity() -> None:
    identities, _ = load_identities()
    test_split = split_identities([i.name for i in identities])["test"]
    assert demo_identity().name in test_split


def test_the_camera_moves_and_the_fake_differs_only_around_the_face() -> None:
    frames = render_frames(0, SMALL)
    real, fake = frames["real"], frames["fake"]
    assert not np.array_equal(real[0], real[-1])  # pan, zoom and rotation
    changed = []
    for r, f in zip(real, fake, strict=True):
        diff = np.abs(r.astype(int) - f.astype(int)).max(axis=2) > 0
        ys, xs = np.nonzero(diff)
        assert len(ys) > 0
        # inside the face-centred blend square, which sits near the frame's centre
        assert xs.min() > SMALL.width * 0.2 and xs.max() < SMALL.width * 0.8
        changed.append(len(ys))
    # the same mask every frame: the changed area follows the slow zoom, no jumps
    assert max(changed) / min(changed) < 1.6


def test_another_seed_blends_differently() -> None:
    a = render_frames(0, SMALL)["fake"][0]
    b = render_frames(1, SMALL)["fake"][0]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", ["real_0.mp4", "fake_0.mp4"])
def test_the_committed_examples_are_the_documented_videos(name: str) -> None:
    path = REPO_ROOT / "examples" / name
    assert path.stat().st_size < 400 * 1024  # small enough to commit
    info = probe_video(path.read_bytes(), VideoLimits())
    shot = Shot()
    assert (info.container, info.codec) == ("mp4", "h264")
    assert (info.width, info.height) == (shot.width, shot.height)
    assert info.fps == shot.fps and info.frame_count == shot.frames
    assert info.duration_s == pytest.approx(shot.frames / shot.fps)


def test_the_command_rebuilds_the_committed_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert "real_0.mp4" in capsys.readouterr().out
    for name in ("real_0.mp4", "fake_0.mp4"):
        rebuilt = decoded_frames(tmp_path / name)
        committed = decoded_frames(REPO_ROOT / "examples" / name)
        assert len(rebuilt) == len(committed)
        assert all(np.array_equal(x, y) for x, y in zip(rebuilt, committed, strict=True))
