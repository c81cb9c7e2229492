"""Following one person across sampled frames (src/media/tracking.py)."""

from __future__ import annotations

import pytest

from src.media.faces import Face, FaceDetector
from src.media.tracking import box_iou, follow_face
from src.media.video import VideoLimits, decode_video
from tests.helpers.videos import face_video_bytes


def face(x: int, y: int, side: int, score: float = 0.99) -> Face:
    return Face((x, y, side, side), score)


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_one_face_a_frame_is_returned_as_it_is() -> None:
    frames = [[face(0, 0, 50)], [], [face(300, 200, 40)]]  # far apart: no overlap, still it
    assert follow_face(frames) == [frames[0][0], None, frames[2][0]]


def test_no_frames_and_no_faces() -> None:
    assert follow_face([]) == []
    assert follow_face([[], []]) == [None, None]


def test_the_larger_person_is_followed_and_the_other_never_replaces_them() -> None:
    big = [face(100 + 5 * i, 50, 100) for i in range(5)]
    small = [face(400 - 5 * i, 60, 50) for i in range(5)]
    frames: list[list[Face]] = [[small[i], big[i]] for i in range(5)]
    frames[2] = [small[2]]  # the main person is not found in frame 2
    chosen = follow_face(frames)
    assert chosen[2] is None
    assert [chosen[i] for i in (0, 1, 3, 4)] == [big[i] for i in (0, 1, 3, 4)]


def test_a_person_present_in_more_frames_outweighs_a_bigger_passer_by() -> None:
    stayer = [face(100, 100, 80) for _ in range(6)]
    passer = face(300, 50, 120)  # larger, but in one frame only
    frames = [[s] for s in stayer]
    frames[0] = [passer, stayer[0]]
    assert follow_face(frames) == stayer


def test_a_track_survives_a_frame_where_its_face_was_missed() -> None:
    a = [face(10 + 4 * i, 10, 80) for i in range(4)]
    b = [face(200, 10, 59) for i in range(4)]
    frames = [[a[0], b[0]], [b[1]], [a[2], b[2]], [a[3], b[3]]]
    # a is missed in frame 1 but continues from its box in frame 0; its summed area is larger
    assert follow_face(frames) == [a[0], None, a[2], a[3]]


def test_greedy_linking_gives_each_detection_to_its_best_overlap() -> None:
    left, right = face(0, 0, 100), face(90, 0, 100)
    moved_left, moved_right = face(5, 0, 100), face(95, 0, 100)
    chosen = follow_face([[left, right], [moved_right, moved_left]])
    assert chosen in ([left, moved_left], [right, moved_right])


def test_min_iou_must_be_a_fraction() -> None:
    with pytest.raises(ValueError):
        follow_face([[face(0, 0, 10)]], min_iou=0.0)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _detections(data: bytes, detector: FaceDetector) -> list[list[Face]]:
    decoded = decode_video(data, 6, VideoLimits())
    return [detector.detect_faces(f.rgb) for f in decoded.frames]


def test_a_real_two_face_video_follows_the_larger_face(detector: FaceDetector) -> None:
    per_frame = _detections(face_video_bytes(faces=2), detector)
    assert all(len(faces) == 2 for faces in per_frame)
    chosen = follow_face(per_frame)
    assert all(c is not None and c.box[0] < 200 for c in chosen)  # the big face, on the left
    assert all(
        c is max(faces, key=lambda f: f.area) for c, faces in zip(chosen, per_frame, strict=True)
    )


def test_a_video_without_faces_gives_none_everywhere(detector: FaceDetector) -> None:
    assert follow_face(_detections(face_video_bytes(faces=0), detector)) == [None] * 6
