"""One person across a video's sampled frames, so that a video verdict is about one face.

Detections are linked into tracks by box overlap (IoU), greedily, highest overlap first, each
detection joining the track whose last box it overlaps most. The track that stands for "the
person in this video" is the one with the largest summed face area: present in many frames and
large in them. A frame where that person was not found gets None; a second person's face is
never scored in their place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from src.media.faces import Box, Face

__all__ = ["box_iou", "follow_face"]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when either is empty)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    faces: dict[int, Face] = field(default_factory=dict)  # frame number -> face
    last: Box = (0, 0, 0, 0)
    area: int = 0
    score: float = 0.0

    def add(self, frame: int, face: Face) -> None:
        self.faces[frame] = face
        self.last = face.box
        self.area += face.area
        self.score += face.score


def follow_face(per_frame: Sequence[Sequence[Face]], *, min_iou: float = 0.3) -> list[Face | None]:
    """The face of the video's main person in each frame, or None where they are not found.

    ``per_frame[i]`` holds the faces detected in frame ``i`` (any order). Where no frame holds
    more than one face there is no one to confuse: each frame's face is returned as it is.
    Otherwise detections are linked into tracks (a detection continues the track whose last box
    it overlaps by at least ``min_iou``, best overlaps first; a track survives frames where it
    was not found) and the track with the largest summed area (then summed score, then the
    earliest) is followed.
    """
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    if all(len(faces) <= 1 for faces in per_frame):
        return [faces[0] if faces else None for faces in per_frame]
    tracks: list[_Track] = []
    for index, faces in enumerate(per_frame):
        _link(tracks, index, faces, min_iou)
    if not tracks:
        return [None] * len(per_frame)
    best = max(tracks, key=lambda t: (t.area, t.score, -min(t.faces)))
    return [best.faces.get(i) for i in range(len(per_frame))]


def _link(tracks: list[_Track], index: int, faces: Sequence[Face], min_iou: float) -> None:
    """Adds frame ``index``'s faces to the tracks they continue, or as new tracks."""
    pairs = sorted(
        (
            (box_iou(track.last, face.box), t, f)
            for t, track in enumerate(tracks)
            for f, face in enumerate(faces)
        ),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    used_tracks: set[int] = set()
    used_faces: set[int] = set()
    for iou, t, f in pairs:
        if iou < min_iou:
            break
        if t in used_tracks or f in used_faces:
            continue
        tracks[t].add(index, faces[f])
        used_tracks.add(t)
        used_faces.add(f)
    for f, face in enumerate(faces):
        if f not in used_faces:
            track = _Track()
            track.add(index, face)
            tracks.append(track)
