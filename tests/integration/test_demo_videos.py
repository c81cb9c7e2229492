"""The committed demo model tells the committed demo videos apart, through the video path:
sampled frames, the face followed across them, the serving crop, and each aggregation rule."""

from __future__ import annotations

import pytest

from src.core.aggregate import AGGREGATE_RULES, DEFAULT_AGGREGATE, aggregate
from src.core.labels import decide
from src.core.settings import DEFAULT_CHECKPOINT
from src.media.faces import FaceDetector, crop_face
from src.media.tracking import follow_face
from src.media.video import VideoLimits, decode_video
from src.models.backends import Backend, load_backend
from src.models.transforms import build_crop
from tests.helpers import REPO_ROOT

FRAMES = 16


@pytest.fixture(scope="module")
def backend() -> Backend:
    return load_backend("torch", REPO_ROOT / DEFAULT_CHECKPOINT, device="cpu", threads=2)


@pytest.fixture(scope="module")
def frame_probs(backend: Backend) -> dict[str, list[float]]:
    metadata = backend.metadata
    assert metadata.face_crop, "the demo model is trained on face crops"
    to_model = build_crop(metadata)
    detector = FaceDetector()
    probs: dict[str, list[float]] = {}
    for name in ("real_0", "fake_0"):
        data = (REPO_ROOT / "examples" / f"{name}.mp4").read_bytes()
        decoded = decode_video(data, FRAMES, VideoLimits())
        assert len(decoded.frames) == FRAMES
        faces = follow_face([detector.detect_faces(f.rgb) for f in decoded.frames])
        crops = [
            to_model(crop_face(frame.rgb, face.box, margin=metadata.face_margin))
            for frame, face in zip(decoded.frames, faces, strict=True)
            if face is not None
        ]
        assert len(crops) >= FRAMES - 2, f"{name}: the face was missed in too many frames"
        assert all(max(f.box[2:]) >= 100 for f in faces if f is not None), "faces of 100+ px"
        probs[name] = [score.fake_prob for score in backend.score(crops)]
    return probs


@pytest.mark.parametrize("rule", AGGREGATE_RULES)
def test_the_fake_video_scores_clearly_higher_under_each_rule(
    backend: Backend, frame_probs: dict[str, list[float]], rule: str
) -> None:
    real = aggregate(frame_probs["real_0"], rule)  # type: ignore[arg-type]
    fake = aggregate(frame_probs["fake_0"], rule)  # type: ignore[arg-type]
    # Each rule puts the two videos on either side of the model's threshold, well apart (the
    # calibrated scores sit closer to the middle than raw ones: T = 8.1 for the demo model).
    assert real < backend.metadata.threshold <= fake, (rule, real, fake)
    assert fake - real > 0.25, (rule, real, fake)


def test_the_default_rule_gives_each_video_its_label(
    backend: Backend, frame_probs: dict[str, list[float]]
) -> None:
    threshold = backend.metadata.threshold
    assert decide(aggregate(frame_probs["real_0"], DEFAULT_AGGREGATE), threshold) == "real"
    assert decide(aggregate(frame_probs["fake_0"], DEFAULT_AGGREGATE), threshold) == "fake"


def test_most_fake_frames_outscore_every_real_frame(frame_probs: dict[str, list[float]]) -> None:
    highest_real = max(frame_probs["real_0"])
    above = sum(p > highest_real for p in frame_probs["fake_0"])
    assert above >= 0.8 * len(frame_probs["fake_0"])
