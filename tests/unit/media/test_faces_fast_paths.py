"""The face detector's fast paths compute what the plain ones do.

* NMS, through OpenCV's ``cv2.dnn.NMSBoxes`` or NumPy: the greedy definition; one call with
  ``groups`` (P-Net's levels) is one call per group.
* Crops for R-/O-Net: the vectorised box arithmetic gives the pixels one resize per box gave.
* R-Net's graph pads its first layer to whole blocks of channels without changing its outputs.
* A largest-face search that goes from coarse to fine levels reuses what it computed: P-Net per
  level, R-/O-Net per box; it then answers exactly what the search over every level answers.

The faces themselves (IoU with the recorded boxes) are checked in
``test_face_detector_speed_parity.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from src.media import faces as faces_mod
from src.media import faces_onnx
from src.media.faces import FaceDetector, available_backends
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    "mtcnn" not in available_backends(), reason="MTCNN weights (facenet-pytorch) not installed"
)


# ------------------------------------------------------------------------------------ NMS


def _greedy_reference(boxes: np.ndarray, scores: np.ndarray, thr: float, mode: str) -> list[int]:
    """NMS from its definition, one pair at a time."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        area_i = (x2 - x1 + 1) * (y2 - y1 + 1)
        dropped = False
        for k in kept:
            a1, b1, a2, b2 = boxes[k]
            iw = max(0.0, min(x2, a2) - max(x1, a1) + 1)
            ih = max(0.0, min(y2, b2) - max(y1, b1) + 1)
            inter = iw * ih
            area_k = (a2 - a1 + 1) * (b2 - b1 + 1)
            if mode == "min":
                over = inter / min(area_i, area_k)
            else:
                over = inter / (area_i + area_k - inter)
            if over > thr:
                dropped = True
                break
        if not dropped:
            kept.append(i)
    return kept


def _random_boxes(
    rng: np.random.Generator, n: int, fractional: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 150, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1)
    if not fractional:  # P-Net's boxes are whole pixels
        boxes = np.floor(boxes)
    # float32 values, as the networks give (ties: input order decides)
    scores = np.round(rng.uniform(0.01, 1.0, n), 2).astype(np.float32).astype(np.float64)
    return boxes, scores


@pytest.fixture(params=["opencv", "numpy"])
def nms_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Union-mode NMS through cv2.dnn.NMSBoxes (checked to be taken), or NumPy alone."""
    if request.param == "numpy":
        monkeypatch.setattr(faces_mod, "_NMS_WITH_OPENCV", False)
    else:
        assert faces_mod._NMS_WITH_OPENCV, "cv2.dnn.NMSBoxesBatched missing"
        taken = faces_mod._nms_opencv

        def must_take(*args: Any) -> Any:
            kept = taken(*args)
            assert kept is not None
            return kept

        monkeypatch.setattr(faces_mod, "_nms_opencv", must_take)
    return str(request.param)


@pytest.mark.parametrize("n", [1, 2, 9, 60, 200])
@pytest.mark.parametrize("fractional", [False, True])
def test_nms_is_the_greedy_definition(n: int, fractional: bool, nms_path: str) -> None:
    boxes, scores = _random_boxes(np.random.default_rng(n), n, fractional)
    for mode in ("union", "min"):
        for thr in (0.3, 0.5, 0.7):
            got = faces_mod._nms(boxes, scores, thr, mode).tolist()
            assert got == _greedy_reference(boxes, scores, thr, mode)


def test_nms_scores_opencv_cannot_take_go_to_numpy() -> None:
    boxes, scores = _random_boxes(np.random.default_rng(7), 30)
    assert faces_mod._nms_opencv(boxes, scores, 0.5, None) is not None
    for odd in (scores + 1e-9, np.where(np.arange(30) == 3, 0.0, scores)):  # float64, a zero
        assert faces_mod._nms_opencv(boxes, odd, 0.5, None) is None
        assert faces_mod._nms(boxes, odd, 0.5).tolist() == _greedy_reference(
            boxes, odd, 0.5, "union"
        )


@pytest.mark.parametrize("many", ["one matrix", "one call per group", "loop"])
def test_grouped_nms_is_one_nms_per_group(
    many: str, nms_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if many == "one call per group":
        monkeypatch.setattr(faces_mod, "_NMS_GROUPED_MATRIX_MAX", 0)
    if many == "loop":
        monkeypatch.setattr(faces_mod, "_NMS_GROUPED_MATRIX_MAX", 10_000)
        monkeypatch.setattr(faces_mod, "_NMS_MATRIX_MAX", 0)
    rng = np.random.default_rng(3)
    boxes, scores = _random_boxes(rng, 90)
    groups = rng.integers(0, 4, 90)
    for thr in (0.3, 0.5):
        got = faces_mod._nms(boxes, scores, thr, groups=groups)
        expected: list[int] = []
        for g in range(4):
            members = np.flatnonzero(groups == g)
            kept = _greedy_reference(boxes[members], scores[members], thr, "union")
            expected.extend(members[kept].tolist())
        # Overall score order, ties in input order (as one NMS call orders what it keeps).
        expected.sort(key=lambda i: (-scores[i], i))
        assert got.tolist() == expected
        # Boxes of different groups never drop each other, even where they overlap.
        assert len(got) > len(faces_mod._nms(boxes, scores, thr))


# ------------------------------------------------------------------------------------ crops


def _crops_one_by_one(pixels: Any, boxes: np.ndarray, size: int) -> np.ndarray:
    """The crops as the detector made them before (one box at a time, in Python)."""
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    bi = np.trunc(boxes[:, :4]).astype(np.int64)
    for k, (x1, y1, x2, y2) in enumerate(bi.tolist()):
        x1, y1 = max(x1, 1) - 1, max(y1, 1) - 1
        x2, y2 = min(x2, pixels.det_w), min(y2, pixels.det_h)
        if x2 <= x1 or y2 <= y1:
            continue
        side = min((x2 - x1) * pixels.kx, (y2 - y1) * pixels.ky)
        j = pixels._halvings_for(size / side, faces_mod._CROP_STEP)
        src = pixels.float_halving(j)
        j = min(j, len(pixels.halvings) - 1)
        fx, fy = pixels.kx * 0.5**j, pixels.ky * 0.5**j
        c0, r0 = round(x1 * fx), round(y1 * fy)
        patch = src[r0 : max(round(y2 * fy), r0 + 1), c0 : max(round(x2 * fx), c0 + 1)]
        if patch.size:
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


@pytest.mark.parametrize(
    ("shape", "det_size"),
    [((224, 224), (224, 224)), ((720, 1280), (1024, 576)), ((37, 23), (23, 37)), ((5, 9), (9, 5))],
)
def test_crops_are_the_pixels_of_one_resize_per_box(
    shape: tuple[int, int], det_size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    w, h = det_size
    n = 40
    x1 = rng.uniform(-0.2 * w, w, n)
    y1 = rng.uniform(-0.2 * h, h, n)
    side = rng.uniform(0.5, 1.2 * max(w, h), n)
    boxes = np.stack([x1, y1, x1 + side, y1 + side * rng.uniform(0.8, 1.25, n)], axis=1)
    boxes[0] = [w + 5, h + 5, w + 50, h + 50]  # outside the image: a black crop
    for size in (24, 48):
        # Separate pixel sets: each makes its halvings as it needs them.
        fast = faces_mod._Pixels(rgb, w, h).crops(boxes, size)
        slow = _crops_one_by_one(faces_mod._Pixels(rgb, w, h), boxes, size)
        assert np.array_equal(fast, slow)
        assert not fast[0].any()


# ------------------------------------------------------------------------------------ graphs


def _session(graph: bytes) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def test_rnet_channel_padding_changes_no_output(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    folder = faces_mod._mtcnn_weight_dir()
    assert folder is not None
    weights = faces_onnx.read_weights(folder)["rnet"]
    padded = faces_onnx._rnet_graph(weights)
    first_conv = next(n for n in onnx.load_from_string(padded).graph.node if n.op_type == "Conv")
    inits = {i.name: i for i in onnx.load_from_string(padded).graph.initializer}
    channels = inits[first_conv.input[1]].dims[0]
    assert weights["conv1.weight"].shape[0] == 28
    assert channels % faces_onnx._CHANNEL_BLOCK == 0
    monkeypatch.setattr(faces_onnx, "_CHANNEL_BLOCK", 1)  # no padding
    plain = faces_onnx._rnet_graph(weights)
    crops = np.random.default_rng(4).uniform(0, 255, (9, 24, 24, 3)).astype(np.float32)
    for a, b in zip(
        _session(padded).run(None, {"crops": crops}),
        _session(plain).run(None, {"crops": crops}),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ reuse


class _CountingNets:
    """The detector's networks, counting what each is asked to compute."""

    def __init__(self, nets: Any) -> None:
        self.nets = nets
        self.runtime = nets.runtime
        self.calls: dict[str, list[int]] = {"pnet": [], "rnet": [], "onet": []}

    def _count(self, name: str, size: int) -> Callable[..., Any]:
        self.calls[name].append(size)
        fn: Callable[..., Any] = getattr(self.nets, name)
        return fn

    def pnet(self, image: np.ndarray) -> Any:
        return self._count("pnet", image.shape[0] * image.shape[1])(image)

    def rnet(self, crops: np.ndarray) -> Any:
        return self._count("rnet", len(crops))(crops)

    def onet(self, crops: np.ndarray) -> Any:
        return self._count("onet", len(crops))(crops)


def _astronaut() -> np.ndarray:
    from skimage import data as skdata

    return np.ascontiguousarray(skdata.astronaut())


@pytest.fixture
def counting_detector() -> tuple[FaceDetector, _CountingNets]:
    det = FaceDetector()
    nets = _CountingNets(det._nets)
    det._nets = nets
    return det, nets


def test_a_second_search_of_the_same_levels_runs_no_network(
    counting_detector: tuple[FaceDetector, _CountingNets],
) -> None:
    det, nets = counting_detector
    rgb = _astronaut()
    h, w = rgb.shape[:2]
    pixels = faces_mod._Pixels(rgb, w, h)
    scales = faces_mod._pyramid_scales(h, w, det.min_face_size, det.factor)
    first = faces_mod._mtcnn_stages(pixels, scales, nets, det.thresholds)
    assert first and all(nets.calls.values())
    for calls in nets.calls.values():
        calls.clear()
    again = faces_mod._mtcnn_stages(pixels, scales, nets, det.thresholds)
    assert nets.calls == {"pnet": [], "rnet": [], "onet": []}
    assert len(again) == len(first)
    for (box_a, score_a, lm_a), (box_b, score_b, lm_b) in zip(again, first, strict=True):
        assert np.array_equal(box_a, box_b) and score_a == score_b
        assert np.array_equal(lm_a, lm_b)


def test_coarse_to_fine_search_that_goes_all_the_way_is_the_full_search(
    counting_detector: tuple[FaceDetector, _CountingNets],
) -> None:
    """The astronaut's face (87 px) is too small for every coarse step on a 512-px photo: the
    largest-face search ends with every level, and must answer what ``detect_faces`` does, with
    no P-Net level run twice and no more R-/O-Net work than the coarse steps and the full
    search need together."""
    det, nets = counting_detector
    rgb = _astronaut()
    largest = det.detect_largest(rgb)
    pnet_largest = list(nets.calls["pnet"])
    rnet_largest, onet_largest = sum(nets.calls["rnet"]), sum(nets.calls["onet"])
    for calls in nets.calls.values():
        calls.clear()
    every = det.detect_faces(rgb)
    assert largest is not None and every
    assert (largest.box, largest.score) == (every[0].box, every[0].score)
    assert largest.landmarks is not None and every[0].landmarks is not None
    assert np.array_equal(largest.landmarks, every[0].landmarks)
    # Every level once, as many as the full search runs.
    assert sorted(pnet_largest) == sorted(nets.calls["pnet"])
    # The coarse steps' boxes are among the full search's, mostly: at most a few more crops.
    assert rnet_largest <= 1.25 * sum(nets.calls["rnet"])
    assert onet_largest <= 1.25 * sum(nets.calls["onet"])


def test_large_face_photo_skips_the_fine_levels(
    counting_detector: tuple[FaceDetector, _CountingNets],
) -> None:
    """A demo face photo (224 px, face ~130 px): the first coarse step finds the face and stops,
    with fewer P-Net levels than the full search, and the same face."""
    det, nets = counting_detector
    with Image.open(REPO_ROOT / "examples" / "real_0.jpg") as image:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    largest = det.detect_largest(rgb)
    levels_largest = len(nets.calls["pnet"])
    for calls in nets.calls.values():
        calls.clear()
    every = det.detect_faces(rgb)
    assert largest is not None and every
    assert largest.box == every[0].box
    assert levels_largest < len(nets.calls["pnet"])


# ------------------------------------------------------------------------------------ stage 1


class _TiedPnet:
    """P-Net outputs with many equal scores (so NMS order matters), from the level's pixels."""

    runtime = "test"

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = (image.shape[0] - 2 + 1) // 2 - 4, (image.shape[1] - 2 + 1) // 2 - 4
        h, w = max(h, 0), max(w, 0)
        level = cv2.resize(image[..., 0], (max(w, 1), max(h, 1)), interpolation=cv2.INTER_AREA)
        prob = (np.round(level[:h, :w] / 64.0) / 4.0 + 0.25).astype(np.float32)
        reg = np.zeros((4, h, w), np.float32)
        return prob, reg

    def rnet(self, crops: np.ndarray) -> Any:
        raise AssertionError("stage 1 only")

    onet = rnet


def _stage1_level_by_level(pixels: Any, scales: list[float], thr: float) -> np.ndarray:
    """P-Net's boxes as the detector made them before: NMS per level, the kept boxes of every
    level concatenated in level order, then NMS over all levels."""
    nets = _TiedPnet()
    all_boxes = []
    for scale in scales:
        hs, ws = int(pixels.det_h * scale + 1), int(pixels.det_w * scale + 1)
        prob, reg = nets.pnet(pixels.level(ws, hs))
        ys, xs = np.nonzero(prob >= thr)
        if len(ys) == 0:
            continue
        cand = np.stack(
            [
                np.floor((2 * xs + 1) / scale),
                np.floor((2 * ys + 1) / scale),
                np.floor((2 * xs + 12) / scale),
                np.floor((2 * ys + 12) / scale),
                prob[ys, xs],
            ],
            axis=1,
        )
        cand = np.concatenate([cand, reg[:, ys, xs].T], axis=1)
        all_boxes.append(cand[faces_mod._nms(cand[:, :4], cand[:, 4], 0.5)])
    boxes = np.concatenate(all_boxes, axis=0)
    return boxes[faces_mod._nms(boxes[:, :4], boxes[:, 4], 0.7)]


def test_pnet_stage_in_one_pass_keeps_the_per_level_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    noise = np.random.default_rng(5).integers(0, 256, (180, 260, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(cv2.GaussianBlur(noise, (0, 0), 6))
    scales = faces_mod._pyramid_scales(180, 260, 40, 0.709)
    seen: list[np.ndarray] = []

    def stop_after_stage1(self: Any, boxes: np.ndarray, size: int, net: Any) -> Any:
        seen.append(boxes.copy())
        raise StopIteration

    monkeypatch.setattr(faces_mod._Pixels, "score", stop_after_stage1)
    with pytest.raises(StopIteration):
        faces_mod._mtcnn_stages(faces_mod._Pixels(rgb, 260, 180), scales, _TiedPnet(), (0.6, 0, 0))
    expected = _stage1_level_by_level(faces_mod._Pixels(rgb, 260, 180), scales, 0.6)
    # What R-Net would get: the same boxes, in the same order (before regression and squaring).
    regw = expected[:, 2] - expected[:, 0]
    regh = expected[:, 3] - expected[:, 1]
    squared = faces_mod._rerec(
        np.stack(
            [
                expected[:, 0] + expected[:, 5] * regw,
                expected[:, 1] + expected[:, 6] * regh,
                expected[:, 2] + expected[:, 7] * regw,
                expected[:, 3] + expected[:, 8] * regh,
                expected[:, 4],
            ],
            axis=1,
        )
    )
    assert len(np.unique(expected[:, 4])) < len(expected) / 4  # many ties
    assert np.array_equal(seen[0], squared)
