"""Face detection/cropping and frame extraction (src/preprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from src.media.faces import (
    FaceDetector,
    available_backends,
    crop_box,
    crop_face,
    largest_face_crop,
)
from src.media.frames import (
    VideoReadError,
    extract_frames,
    main,
    sample_frame_indices,
)
from tests.helpers import REPO_ROOT

# The astronaut's face in skimage.data.astronaut() (512x512), checked by eye: roughly
# x 175-270, y 55-180.
ASTRO_FACE_CENTRE = (222.0, 118.0)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut())


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2.0, y + h / 2.0


# ------------------------------------------------------------------------------- faces


def test_detects_the_astronaut_face(detector: FaceDetector, astronaut: np.ndarray) -> None:
    boxes = detector.detect(astronaut)
    assert len(boxes) == 1
    cx, cy = _centre(boxes[0])
    assert abs(cx - ASTRO_FACE_CENTRE[0]) < 20 and abs(cy - ASTRO_FACE_CENTRE[1]) < 25
    assert 70 <= boxes[0][2] <= 140 and 80 <= boxes[0][3] <= 160
    faces = detector.detect_faces(astronaut)
    assert faces[0].score > 0.9
    if faces[0].landmarks is not None:  # MTCNN: eyes above the mouth, left eye left
        lm = faces[0].landmarks
        assert lm[0, 0] < lm[1, 0] and lm[0, 1] < lm[3, 1]


def test_largest_face_crop_is_square_sized_and_centred(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    crop = largest_face_crop(astronaut, detector, margin=1.3, size=224)
    assert crop is not None
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # the face is found again in the crop, near its centre, filling about 1/1.3 of it
    again = detector.detect(crop)
    assert again
    cx, cy = _centre(again[0])
    assert abs(cx - 112) < 22 and abs(cy - 112) < 22
    assert 0.55 < max(again[0][2:]) / 224 < 0.95
    # without size: side = round(margin * max(w, h))
    box = detector.detect(astronaut)[0]
    raw = largest_face_crop(astronaut, detector, margin=1.3)
    assert raw is not None
    assert raw.shape == (round(1.3 * max(box[2:])),) * 2 + (3,)


def test_margin_sets_the_crop_side_and_content() -> None:
    img = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    box = (10, 20, 30, 40)  # centre (25, 40), max side 40
    exact = crop_face(img, box, margin=1.0)
    np.testing.assert_array_equal(exact, img[20:60, 5:45])
    assert crop_box(box, 1.5)[2] == 60
    assert crop_face(img, box, margin=1.5).shape == (60, 60, 3)
    assert crop_face(img, box, margin=2.0, size=32).shape == (32, 32, 3)
    wide = crop_face(img, box, margin=2.0)
    # the larger crop holds the smaller one at its centre
    np.testing.assert_array_equal(wide[20:60, 20:60], exact)
    with pytest.raises(ValueError):
        crop_face(img, (0, 0, 0, 10))


def test_crop_at_the_border_is_padded_to_size() -> None:
    img = np.full((80, 80, 3), 200, np.uint8)
    img[0, 0] = (10, 20, 30)
    box = (0, 0, 20, 20)  # centre (10, 10): a 1.3x..3x crop leaves the image
    rep = crop_face(img, box, margin=3.0)
    assert rep.shape == (60, 60, 3)
    np.testing.assert_array_equal(rep[:20, :20], np.broadcast_to([10, 20, 30], (20, 20, 3)))
    zero = crop_face(img, box, margin=3.0, pad_mode="constant")
    assert zero.shape == (60, 60, 3)
    assert (zero[:20, :] == 0).all() and (zero[:, :20] == 0).all()
    assert crop_face(img, box, margin=3.0, size=224).shape == (224, 224, 3)
    assert crop_face(img, (70, 70, 10, 10), margin=4.0, size=50).shape == (50, 50, 3)


def test_no_face_returns_none(detector: FaceDetector) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    coins = np.repeat(skdata.coins()[..., None], 3, axis=2)
    flat = np.full((200, 200, 3), 127, np.uint8)
    for img in (noise, coins, flat):
        assert detector.detect(img) == []
        assert largest_face_crop(img, detector) is None


def test_detector_rejects_bad_input(detector: FaceDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((10, 10, 3), np.float32))


def test_detector_is_thread_safe(detector: FaceDetector, astronaut: np.ndarray) -> None:
    expected = detector.detect(astronaut)
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    expected_small = detector.detect(small)
    results: list[bool] = []

    def work(i: int) -> None:
        for _ in range(2):
            img, want = (astronaut, expected) if i % 2 else (small, expected_small)
            results.append(detector.detect(img) == want)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(results)


def test_downscaled_detection_maps_boxes_back(astronaut: np.ndarray) -> None:
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    boxes = FaceDetector(max_side=512).detect(big)
    assert boxes
    cx, cy = _centre(boxes[0])
    assert abs(cx - 3 * ASTRO_FACE_CENTRE[0]) < 60 and abs(cy - 3 * ASTRO_FACE_CENTRE[1]) < 75


@pytest.mark.skipif("haar" not in available_backends(), reason="no Haar cascades in this OpenCV")
def test_haar_backend(astronaut: np.ndarray) -> None:
    det = FaceDetector(backend="haar")
    boxes = det.detect(astronaut)
    assert boxes
    cx, cy = _centre(boxes[0])
    assert abs(cx - ASTRO_FACE_CENTRE[0]) < 30 and abs(cy - ASTRO_FACE_CENTRE[1]) < 30


# ------------------------------------------------------------------------------- frames


def test_sample_frame_indices() -> None:
    assert sample_frame_indices(100, num_frames=4) == [12, 37, 62, 87]
    assert sample_frame_indices(10, num_frames=5) == [1, 3, 5, 7, 9]
    assert len(sample_frame_indices(300)) == 16  # default
    assert sample_frame_indices(5, num_frames=16) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(100, every=7) == list(range(0, 100, 7))
    assert sample_frame_indices(3, every=5) == [0]
    assert sample_frame_indices(0, num_frames=4) == []
    with pytest.raises(ValueError):
        sample_frame_indices(10, num_frames=2, every=2)
    with pytest.raises(ValueError):
        sample_frame_indices(10, every=0)


N_FRAMES = 24
N_FACE_FRAMES = 12  # frames 0-11 show the astronaut, 12-23 are flat grey at 10 * index


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    face = cv2.cvtColor(cv2.resize(astronaut, (320, 320)), cv2.COLOR_RGB2BGR)
    fourcc = cv2.VideoWriter.fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(path), fourcc, 10, (320, 320))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(face if i < N_FACE_FRAMES else np.full((320, 320, 3), 10 * i, np.uint8))
    writer.release()
    return path


def _imread(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, path
    return np.asarray(img)


def test_extract_evenly_spaced_frames(video: Path, tmp_path: Path) -> None:
    res = extract_frames(video, out_dir=tmp_path, num_frames=4)
    assert res.total_frames == N_FRAMES
    assert res.indices == [3, 9, 15, 21]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"clip_f{i:06d}.png" for i in (3, 9, 15, 21)]
    # the right frames were read: grey frames have mean 10 * index
    for idx in (15, 21):
        img = _imread(tmp_path / f"clip_f{idx:06d}.png")
        assert img.shape == (320, 320, 3)
        assert abs(float(img.mean()) - 10 * idx) < 3
    assert res.no_face_indices == [] and res.unreadable_indices == []
    assert all(f.image is None for f in res.frames)  # written, not kept


def test_extract_every_k_in_memory(video: Path) -> None:
    res = extract_frames(video, every=5)
    assert res.indices == [0, 5, 10, 15, 20]
    assert len(res.images) == 5 and res.images[0].shape == (320, 320, 3)
    assert abs(float(res.images[4].mean()) - 200) < 3  # frame 20


def test_extract_faces_reports_frames_without_face(
    video: Path, tmp_path: Path, detector: FaceDetector
) -> None:
    res = extract_frames(video, out_dir=tmp_path, num_frames=4, faces=True, detector=detector)
    assert res.no_face_indices == [15, 21]
    assert [f.face_found for f in res.frames] == [True, True, False, False]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["clip_f000003.png", "clip_f000009.png"]
    crop = _imread(tmp_path / written[0])
    assert crop.shape == (224, 224, 3)


def test_cli_faces_manifest_and_summary(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main([str(video), "--out", str(out), "--num-frames", "4", "--faces", "--size", "96"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "no face in 2" in text and "[15, 21]" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["frames_without_face"] == 2
    assert manifest["summary"]["frames_written"] == 2
    assert manifest["videos"][0]["no_face_indices"] == [15, 21]
    files = sorted((out / "clip").iterdir())
    assert [p.name for p in files] == ["clip_f000003.png", "clip_f000009.png"]
    assert _imread(files[0]).shape == (96, 96, 3)


def test_missing_or_bad_video(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError):
        extract_frames(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoReadError):
        extract_frames(junk)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.media.frames",
            str(tmp_path / "nope.mp4"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "video not found" in proc.stderr


def test_cli_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["v.mp4", "--out", str(tmp_path), "--num-frames", "3", "--every", "2"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["v.mp4", "--out", str(tmp_path), "--num-frames", "0"])
    assert exc.value.code == 2
