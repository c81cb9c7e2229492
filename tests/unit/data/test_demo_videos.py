"""Real-footage test videos and their twins (src/data/demo_videos.py), and the shuffled-labels
copy of a manifest (src/data/shuffle_labels.py)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from src.data.demo_videos import (
    SYNTHETIC_FACE_PX,
    blend_clip,
    smooth_track,
    synthetic_shot,
    track_faces,
)
from src.data.make_videos import shot_frames
from src.data.shuffle_labels import main as shuffle_main
from src.data.shuffle_labels import shuffle_manifest
from src.data.sources import load_identities
from src.media.faces import FaceDetector


def _face_row(cx: float, cy: float, side: float) -> np.ndarray:
    lm = np.asarray([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.2], [0.15, 0.2]])
    return np.vstack([[cx, cy], [side, side], np.asarray([cx, cy]) + lm * side])


def test_the_track_fills_gaps_from_the_nearest_face_and_averages_jitter() -> None:
    raw = [_face_row(100 + (4 if i % 2 else -4), 80, 60) for i in range(9)]
    raw[3] = None  # no face found in this frame
    raw[0] = None
    track = smooth_track(raw, window=5)
    assert track is not None and len(track) == 9
    centres = [box[0] + box[2] / 2 for box, _ in track]
    # the raw centres jump by 8 px every frame; averaged over 5 frames they stay within 4 px
    assert max(centres[2:7]) - min(centres[2:7]) <= 4
    assert all(lm is not None and lm.shape == (5, 2) for _, lm in track)
    assert smooth_track([None, None]) is None


def test_the_blend_follows_the_face_with_the_same_draws_every_frame() -> None:
    ident = next(i for i in load_identities()[0] if i.name == "t1_3")
    shot = synthetic_shot(ident)
    face = max(ident.box[2:]) * float(np.mean(shot.zoom))
    assert face == pytest.approx(SYNTHETIC_FACE_PX, rel=0.02)
    shot = dataclasses.replace(shot, frames=5, width=320, height=240)
    frames = [real for real, _ in shot_frames(ident, shot, 0)]
    track = smooth_track(track_faces(frames, FaceDetector()))
    assert track is not None
    fakes = blend_clip(frames, track, seed=3, key="clip")
    again = blend_clip(frames, track, seed=3, key="clip")
    other = blend_clip(frames, track, seed=3, key="another clip")
    changed = []
    for real, fake, same, diff in zip(frames, fakes, again, other, strict=True):
        assert np.array_equal(fake, same)  # deterministic
        assert not np.array_equal(fake, diff)  # the key picks the draws
        mask = np.abs(real.astype(int) - fake.astype(int)).max(axis=2) > 0
        changed.append(int(mask.sum()))
    # one mask, moving with the face: the changed area stays about the same size
    assert min(changed) > 0 and max(changed) / min(changed) < 1.6


def test_shuffled_labels_keep_paths_and_balance(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    data.mkdir()
    rows = ["path,split,label,identity"]
    for split in ("train", "val", "test"):
        for i in range(20):
            rows.append(f"{split}/x{i}.jpg,{split},{'real' if i % 2 else 'fake'},id{i % 4}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "shuffled"
    changed = shuffle_manifest(data, out, seed=0)
    assert set(changed) == {"train", "val"} and all(n > 0 for n in changed.values())
    with (out / "manifest.csv").open(newline="") as fh:
        new = list(csv.DictReader(fh))
    assert [r["path"] for r in new] == [f"../demo/{r.split(',')[0]}" for r in rows[1:]]
    for split in ("train", "val"):
        labels = [r["label"] for r in new if r["split"] == split]
        assert labels.count("real") == 10  # same balance, other order
    test_labels = [r["label"] for r in new if r["split"] == "test"]
    assert test_labels == ["fake", "real"] * 10  # test keeps its labels
    assert shuffle_main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
