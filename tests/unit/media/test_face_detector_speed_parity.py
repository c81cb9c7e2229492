"""The fast face detector finds the faces the first one found.

``GOLDEN`` holds what ``FaceDetector()`` returned before MTCNN moved to ONNX Runtime (torch
networks, the pyramid and crops resized from the full float image, commit a19c8b2): every face
``(box, score, landmarks)``, largest first, on the demo faces (``examples/*.jpg``, the
astronaut, Grace Hopper, insightface's group photo and Tom Hanks) and on a 1280x720 frame with
two of them pasted in. Both runtimes must find the same faces (IoU >= 0.8), with similar
scores and landmarks, and the service's face crop must cover the same square.

Speed is not checked here (the machine is noisy): ``python -m bench.faces`` measures it.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from src.media import faces as faces_mod
from src.media import faces_onnx
from src.media.faces import (
    Box,
    FaceDetector,
    NoFaceDetectorError,
    available_backends,
    crop_box,
    crop_face,
    largest_face_crop,
)
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    "mtcnn" not in available_backends(), reason="MTCNN weights (facenet-pytorch) not installed"
)

Landmarks = tuple[float, ...]
GOLDEN: dict[str, list[tuple[Box, float, Landmarks]]] = {
    "fake_0": [
        ((48, 30, 127, 159), 0.9992,
         (73.5, 97.0, 126.9, 101.7, 89.7, 139.5, 75.9, 148.9, 133.7, 154.1)),
    ],
    "fake_1": [
        ((41, 25, 131, 171), 0.9836,
         (64.8, 95.7, 128.3, 92.2, 84.8, 131.3, 72.3, 157.7, 130.3, 155.0)),
    ],
    "real_0": [
        ((52, 32, 128, 163), 1.0,
         (74.7, 96.6, 129.5, 99.9, 92.8, 140.3, 77.8, 151.6, 135.8, 153.6)),
    ],
    "real_1": [
        ((40, 22, 133, 177), 0.9847,
         (64.4, 95.4, 126.8, 90.2, 83.6, 126.4, 68.4, 155.9, 132.3, 152.1)),
    ],
    "astronaut": [
        ((181, 61, 87, 114), 0.9998,
         (204.2, 101.6, 247.4, 104.3, 225.7, 129.9, 201.5, 140.1, 245.3, 142.8)),
    ],
    "grace_hopper": [
        ((166, 107, 181, 233), 1.0,
         (221.2, 191.2, 306.2, 186.8, 268.5, 238.0, 231.5, 280.3, 307.1, 276.3)),
    ],
    "frame_720p": [
        ((859, 282, 111, 143), 0.9989,
         (891.0, 333.3, 946.3, 331.9, 921.6, 363.1, 895.4, 387.4, 944.8, 386.7)),
        ((200, 118, 69, 90), 0.9995,
         (217.8, 149.1, 252.6, 150.9, 234.6, 171.5, 215.9, 180.3, 251.1, 181.8)),
    ],
    "insightface_t1": [
        ((51, 261, 120, 137), 0.9999,
         (84.7, 330.2, 131.0, 305.8, 122.0, 337.3, 114.1, 374.2, 149.4, 352.0)),
        ((462, 265, 109, 146), 0.9991,
         (492.9, 321.1, 542.4, 332.1, 508.0, 367.4, 482.7, 369.8, 531.5, 382.2)),
        ((909, 61, 105, 140), 1.0,
         (920.5, 118.9, 954.2, 114.1, 925.8, 151.4, 934.5, 175.9, 960.9, 171.6)),
        ((740, 342, 102, 136), 0.9999,
         (759.4, 397.3, 804.0, 398.7, 775.3, 429.4, 762.1, 442.0, 810.1, 442.4)),
        ((1134, 276, 94, 122), 0.991,
         (1150.5, 326.0, 1195.0, 322.5, 1165.8, 348.0, 1155.2, 369.3, 1197.8, 366.4)),
        ((278, 152, 98, 116), 0.9996,
         (300.8, 200.8, 334.3, 177.5, 326.2, 209.9, 328.6, 239.4, 355.1, 223.0)),
    ],
    "insightface_tom_hanks": [
        ((0, 0, 84, 112), 0.9989,
         (34.2, 50.5, 72.5, 49.6, 61.4, 78.4, 32.8, 91.3, 66.7, 90.2)),
    ],
}  # fmt: skip
MIN_IOU = 0.8
MAX_SCORE_DIFF = 0.02
# Landmarks within this fraction of the face's longer side (as IoU >= 0.8 allows the box).
MAX_LANDMARK_SHIFT = 0.1
# The checkpoints' margins: the demo model's (and the default) and one more.
MARGINS = [1.3, 1.6]
RUNTIMES = ["onnx", "torch"]


# ------------------------------------------------------------------------------------ images


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _astronaut() -> np.ndarray:
    from skimage import data as skdata

    return np.ascontiguousarray(skdata.astronaut())


def _grace_hopper() -> np.ndarray:
    import matplotlib

    return _read_rgb(Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg")


def _frame_720p() -> np.ndarray:
    """1280x720: a smooth background, Grace Hopper (360 px high) and the astronaut's face."""
    yy, xx = np.mgrid[0:720, 0:1280].astype(np.float32)
    background = np.stack(
        [90 + 60 * np.sin(xx / 97.0) * np.cos(yy / 53.0), 110 + 0.05 * xx, 140 - 0.08 * yy],
        axis=2,
    )
    frame = np.clip(background, 0, 255).astype(np.uint8)
    frame[220:580, 760:1067] = cv2.resize(_grace_hopper(), (307, 360), interpolation=cv2.INTER_AREA)
    face = _astronaut()[40:240, 120:320]
    frame[100:260, 150:310] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_AREA)
    return frame


def _insightface(name: str) -> np.ndarray | None:
    try:
        dist = importlib.metadata.distribution("insightface")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(f"insightface/data/images/{name}")))
    return _read_rgb(path) if path.is_file() else None


_image_cache: dict[str, np.ndarray | None] = {}


def demo_image(name: str) -> np.ndarray:
    if name not in _image_cache:
        loaders: dict[str, Any] = {
            "astronaut": _astronaut,
            "grace_hopper": _grace_hopper,
            "frame_720p": _frame_720p,
            "insightface_t1": lambda: _insightface("t1.jpg"),
            "insightface_tom_hanks": lambda: _insightface("Tom_Hanks_54745.png"),
        }
        load = loaders.get(name, lambda: _read_rgb(REPO_ROOT / "examples" / f"{name}.jpg"))
        _image_cache[name] = load()
    image = _image_cache[name]
    if image is None:
        pytest.skip(f"{name}: insightface not installed (pip install --no-deps insightface)")
    return image


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


_detectors: dict[str, FaceDetector] = {}


def detector(runtime: str) -> FaceDetector:
    if runtime not in _detectors:
        if runtime == "onnx" and not faces_onnx.onnxruntime_available():
            pytest.skip("onnxruntime not installed")
        _detectors[runtime] = FaceDetector(runtime="onnx" if runtime == "onnx" else "torch")
    return _detectors[runtime]


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_finds_the_same_faces_as_before(name: str, runtime: str) -> None:
    rgb = demo_image(name)
    found = detector(runtime).detect_faces(rgb)
    golden = GOLDEN[name]
    assert len(found) == len(golden), [f.box for f in found]
    for box, score, landmarks in golden:
        best = max(found, key=lambda f: iou(f.box, box))
        assert iou(best.box, box) >= MIN_IOU, (best.box, box)
        assert abs(best.score - score) <= MAX_SCORE_DIFF
        assert best.landmarks is not None
        shift = np.abs(best.landmarks - np.reshape(landmarks, (5, 2))).max()
        assert shift <= MAX_LANDMARK_SHIFT * max(box[2], box[3]), shift
    # The largest face is the same one.
    assert iou(found[0].box, golden[0][0]) >= MIN_IOU


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_largest_face_is_the_one_detect_faces_finds_largest(name: str, runtime: str) -> None:
    rgb = demo_image(name)
    det = detector(runtime)
    largest = det.detect_largest(rgb)
    assert largest is not None
    assert iou(largest.box, det.detect_faces(rgb)[0].box) >= 0.95
    assert iou(largest.box, GOLDEN[name][0][0]) >= MIN_IOU


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_service_face_crop_covers_the_same_square(name: str, margin: float) -> None:
    """``largest_face_crop`` (what the service and the training tools call) at a checkpoint's
    margin: the crop of the detected box, on the square the first detector's box gave."""
    rgb = demo_image(name)
    det = detector("onnx")
    crop = largest_face_crop(rgb, det, margin=margin)
    largest = det.detect_largest(rgb)
    assert crop is not None and largest is not None
    assert np.array_equal(crop, crop_face(rgb, largest.box, margin=margin))
    before = crop_box(GOLDEN[name][0][0], margin)
    now = crop_box(largest.box, margin)
    assert iou(now, before) >= MIN_IOU, (now, before)
    assert abs(now[2] / before[2] - 1) <= 0.15


def test_no_face_in_a_flat_image_or_noise() -> None:
    det = detector("onnx")
    rng = np.random.default_rng(0)
    for rgb in (
        np.full((240, 320, 3), 128, np.uint8),
        rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
    ):
        assert det.detect_faces(rgb) == []
        assert det.detect_largest(rgb) is None
        assert largest_face_crop(rgb, det) is None


def test_tiny_and_odd_sized_images() -> None:
    det = detector("onnx")
    for shape in [(12, 12, 3), (13, 37, 3), (1, 500, 3), (45, 45, 3)]:
        assert det.detect_faces(np.zeros(shape, np.uint8)) == []
    face = demo_image("real_0")
    odd = cv2.resize(face, (223, 221), interpolation=cv2.INTER_AREA)
    assert det.detect_largest(odd) is not None


def test_onnx_detector_is_thread_safe() -> None:
    det = detector("onnx")
    images = [demo_image(n) for n in ("real_0", "astronaut", "frame_720p")]
    expected = [det.detect_faces(im) for im in images]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(6):
                j = (i + k) % len(images)
                got = det.detect_faces(images[j])
                assert [f.box for f in got] == [f.box for f in expected[j]]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ------------------------------------------------------------------------------------ networks


def _weight_dir() -> Path:
    folder = faces_mod._mtcnn_weight_dir()
    assert folder is not None
    return folder


def test_weights_are_read_without_torch_exactly() -> None:
    torch = pytest.importorskip("torch")
    for name in ("pnet", "rnet", "onet"):
        path = _weight_dir() / f"{name}.pt"
        ours = faces_onnx.read_legacy_state_dict(path)
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            assert ours[key].shape == tuple(value.shape)
            assert np.array_equal(ours[key], value.numpy()), key


def test_weights_reader_refuses_other_pickles(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        for obj in (faces_onnx._LEGACY_MAGIC, faces_onnx._LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, fh)
        pickle.dump(subprocess.Popen, fh)
    with pytest.raises(pickle.UnpicklingError):
        faces_onnx.read_legacy_state_dict(path)
    path.write_bytes(b"PK\x03\x04 not a legacy file")
    with pytest.raises(Exception):
        faces_onnx.read_legacy_state_dict(path)


def test_onnx_networks_compute_what_the_torch_ones_do() -> None:
    onnx_nets = detector("onnx")._nets
    torch_nets = detector("torch")._nets
    assert onnx_nets is not None and torch_nets is not None
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (61, 87, 3)).astype(np.float32)
    for a, b in zip(onnx_nets.pnet(image), torch_nets.pnet(image), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5)
    for n in (1, 5, 37):  # 37: more than one R-Net chunk
        crops = rng.uniform(0, 255, (n, 24, 24, 3)).astype(np.float32)
        for a, b in zip(onnx_nets.rnet(crops), torch_nets.rnet(crops), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5)
        crops = rng.uniform(0, 255, (n, 48, 48, 3)).astype(np.float32)
        for a, b in zip(onnx_nets.onet(crops), torch_nets.onet(crops), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_nms_matrix_and_loop_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    for n in (1, 2, 17, 300):
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1)
        scores = np.round(rng.uniform(size=n), 2)  # ties: input order decides
        for mode in ("union", "min"):
            for thr in (0.3, 0.5, 0.7):
                with monkeypatch.context() as m:
                    m.setattr(faces_mod, "_NMS_MATRIX_MAX", 10_000)
                    matrix = faces_mod._nms(boxes, scores, thr, mode)
                with monkeypatch.context() as m:
                    m.setattr(faces_mod, "_NMS_MATRIX_MAX", 0)
                    loop = faces_mod._nms(boxes, scores, thr, mode)
                assert np.array_equal(matrix, loop)


# ------------------------------------------------------------------------------------ runtimes


def test_auto_runtime_is_onnx_where_onnxruntime_imports() -> None:
    if not faces_onnx.onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    assert FaceDetector().runtime == "onnx"


def test_without_onnxruntime_auto_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(_folder: Path) -> Any:
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(faces_onnx, "shared_mtcnn", missing)
    assert FaceDetector(runtime="auto").runtime == "torch"
    with pytest.raises(NoFaceDetectorError, match="ONNX Runtime"):
        FaceDetector(runtime="onnx")
    with pytest.raises(ValueError, match="runtime"):
        FaceDetector(runtime="tensorflow")  # type: ignore[arg-type]


def test_graph_cache_is_written_once_reused_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not faces_onnx.onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    folder = _weight_dir()
    graphs = faces_onnx.load_graphs(folder, cache=tmp_path)
    (key_dir,) = tmp_path.iterdir()
    assert sorted(p.name for p in key_dir.iterdir()) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]

    def no_build(_weights: Any) -> Any:
        raise AssertionError("rebuilt despite the cache")

    with monkeypatch.context() as m:
        m.setattr(faces_onnx, "build_graphs", no_build)
        assert faces_onnx.load_graphs(folder, cache=tmp_path) == graphs
    # A damaged file: the shared loader rebuilds and rewrites it.
    (key_dir / "onet.onnx").write_bytes(b"not a model")
    monkeypatch.setenv("MTCNN_ONNX_CACHE", str(tmp_path))
    monkeypatch.setattr(faces_onnx, "_shared", {})
    nets = faces_onnx.shared_mtcnn(folder)
    assert (key_dir / "onet.onnx").read_bytes() == graphs["onet"]
    assert nets.onet(np.zeros((1, 48, 48, 3), np.float32))[0].shape == (1,)


def test_unwritable_cache_builds_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    graphs = faces_onnx.load_graphs(_weight_dir(), cache=blocker / "cache")
    assert set(graphs) == {"pnet", "rnet", "onet"}


def test_onnx_path_imports_no_torch(tmp_path: Path) -> None:
    """Detection on ONNX Runtime never imports torch, with or without the graph cache."""
    if not faces_onnx.onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    code = (
        "import sys, numpy as np\n"
        "from src.media.faces import FaceDetector, largest_face_crop\n"
        "from skimage import data\n"
        "d = FaceDetector()\n"
        "assert d.runtime == 'onnx', d.runtime\n"
        "assert largest_face_crop(np.ascontiguousarray(data.astronaut()), d) is not None\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {"MTCNN_ONNX_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # first builds the cache, then reads it
        subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True)
    assert len(list((tmp_path / "cache").iterdir())) == 1
