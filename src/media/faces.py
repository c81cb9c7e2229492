"""Offline face detection and face cropping.

Two detector back-ends, both fully offline:

* ``"mtcnn"``: MTCNN (Zhang et al., 2016) with the P/R/O-Net weights that the ``facenet-pytorch``
  wheel ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT licence); ``facenet_pytorch``
  itself is never imported (its ``__init__`` needs ``requests`` and it pins ``torch<2.3``;
  install it with ``pip install --no-deps facenet-pytorch==2.6.0``). The networks run on ONNX
  Runtime (:mod:`src.media.faces_onnx`: graphs written from the weights, one thread per call,
  no torch) or, as a fall-back, on ``torch.nn.functional`` (``runtime=``). The pipeline is
  facenet-pytorch's ``detect_face`` in NumPy/OpenCV, with the image pyramid and the crops
  resized from 2x2-mean halvings of the image, so that no resize reads many more pixels than
  it writes. It also gives five landmarks per face. :meth:`FaceDetector.detect_largest` (used
  by :func:`largest_face_crop`) looks for small faces only when no clearly larger face was
  found.
* ``"haar"``: OpenCV Haar cascades from ``cv2.data.haarcascades`` (frontal default, then alt2,
  then profile as fall-backs). OpenCV 5 wheels no longer ship ``cv2.CascadeClassifier`` nor the
  XML files, so this back-end is only available with OpenCV 4.x (or a contrib build plus XMLs).

``FaceDetector(backend="auto")`` picks MTCNN where its weights are installed, else Haar.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)`` throughout; boxes are ``(x, y, w, h)``
in pixels, clipped to the image.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]
Backend = Literal["auto", "mtcnn", "haar"]
Runtime = Literal["auto", "onnx", "torch"]
logger = logging.getLogger(__name__)

__all__ = [
    "Box",
    "Face",
    "FaceDetector",
    "NoFaceDetectorError",
    "available_backends",
    "crop_box",
    "crop_face",
    "largest_face_crop",
]


class NoFaceDetectorError(RuntimeError):
    """Raised when no face-detection back-end is installed."""


@dataclass(frozen=True)
class Face:
    """One detected face."""

    box: Box
    score: float
    # (5, 2) float32 x/y: left eye, right eye, nose, left mouth corner, right mouth corner (as seen
    # in the image), or None for back-ends without landmarks.
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


# --------------------------------------------------------------------------------------------
# MTCNN (weights from the facenet-pytorch wheel)
# --------------------------------------------------------------------------------------------

_MTCNN_FILES = ("pnet", "rnet", "onet")
_mtcnn_lock = threading.Lock()
_mtcnn_weights: dict[str, dict[str, Any]] | None = None


def _mtcnn_weight_dir() -> Path | None:
    """Folder holding ``pnet.pt``/``rnet.pt``/``onet.pt``, found without importing the package."""
    env = os.environ.get("MTCNN_WEIGHTS_DIR")
    candidates: list[Path] = []
    if env:
        candidates.append(Path(env))
    try:
        dist = importlib.metadata.distribution("facenet-pytorch")
        candidates.append(Path(str(dist.locate_file("facenet_pytorch/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for cand in candidates:
        if all((cand / f"{n}.pt").is_file() for n in _MTCNN_FILES):
            return cand
    return None


def _load_mtcnn_weights() -> dict[str, dict[str, Any]]:
    """The three state dicts as float32 torch tensors (imports torch; loaded once)."""
    global _mtcnn_weights
    with _mtcnn_lock:
        if _mtcnn_weights is None:
            import torch

            folder = _mtcnn_weight_dir()
            if folder is None:
                raise NoFaceDetectorError("MTCNN weights not found (pip install facenet-pytorch)")
            loaded = {}
            for name in _MTCNN_FILES:
                sd = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
                loaded[name] = {k: v.float().contiguous() for k, v in sd.items()}
            _mtcnn_weights = loaded
        return _mtcnn_weights


def _pnet(x: Any, w: dict[str, Any]) -> tuple[Any, Any]:
    import torch.nn.functional as F

    x = F.prelu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"]), w["prelu1.weight"])
    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv2.weight"], w["conv2.bias"]), w["prelu2.weight"])
    x = F.prelu(F.conv2d(x, w["conv3.weight"], w["conv3.bias"]), w["prelu3.weight"])
    prob = F.softmax(F.conv2d(x, w["conv4_1.weight"], w["conv4_1.bias"]), dim=1)
    reg = F.conv2d(x, w["conv4_2.weight"], w["conv4_2.bias"])
    return reg, prob


def _rnet(x: Any, w: dict[str, Any]) -> tuple[Any, Any]:
    import torch.nn.functional as F

    x = F.prelu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"]), w["prelu1.weight"])
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv2.weight"], w["conv2.bias"]), w["prelu2.weight"])
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv3.weight"], w["conv3.bias"]), w["prelu3.weight"])
    x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
    x = F.prelu(F.linear(x, w["dense4.weight"], w["dense4.bias"]), w["prelu4.weight"])
    prob = F.softmax(F.linear(x, w["dense5_1.weight"], w["dense5_1.bias"]), dim=1)
    reg = F.linear(x, w["dense5_2.weight"], w["dense5_2.bias"])
    return reg, prob


def _onet(x: Any, w: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch.nn.functional as F

    x = F.prelu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"]), w["prelu1.weight"])
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv2.weight"], w["conv2.bias"]), w["prelu2.weight"])
    x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv3.weight"], w["conv3.bias"]), w["prelu3.weight"])
    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = F.prelu(F.conv2d(x, w["conv4.weight"], w["conv4.bias"]), w["prelu4.weight"])
    x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
    x = F.prelu(F.linear(x, w["dense5.weight"], w["dense5.bias"]), w["prelu5.weight"])
    prob = F.softmax(F.linear(x, w["dense6_1.weight"], w["dense6_1.bias"]), dim=1)
    reg = F.linear(x, w["dense6_2.weight"], w["dense6_2.bias"])
    pts = F.linear(x, w["dense6_3.weight"], w["dense6_3.bias"])
    return reg, pts, prob


class MtcnnNets(Protocol):
    """The three networks behind one interface; inputs are NHWC ``float32`` RGB pixels, 0-255."""

    runtime: str

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(H, W, 3)`` -> face probability ``(h, w)``, box regression ``(4, h, w)``."""
        ...

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 24, 24, 3)`` -> face probability ``(N,)``, box regression ``(N, 4)``."""
        ...

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N, 48, 48, 3)`` -> probability, regression ``(N, 4)``, landmarks ``(N, 10)``."""
        ...


class TorchMtcnn:
    """The networks as ``torch.nn.functional`` calls (the fall-back where onnxruntime is missing).

    Torch runs its ops on the calling thread's OpenMP team, so on the service's preprocessing
    threads it competes with the model thread; the ONNX Runtime networks do not.
    """

    runtime = "torch"

    def __init__(self, weights: dict[str, dict[str, Any]]) -> None:
        self._w = weights

    @staticmethod
    def _input(x: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy((x.astype(np.float32) - 127.5) * 0.0078125)
        return t.permute(0, 3, 1, 2)

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            reg, prob = _pnet(self._input(image[None]), self._w["pnet"])
            return prob[0, 1].numpy(), reg[0].numpy()

    def rnet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            reg, prob = _rnet(self._input(crops), self._w["rnet"])
            return prob[:, 1].numpy(), reg.numpy()

    def onet(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            reg, pts, prob = _onet(self._input(crops), self._w["onet"])
            return prob[:, 1].numpy(), reg.numpy(), pts.numpy()


def _mtcnn_nets(runtime: Runtime) -> MtcnnNets:
    """The networks for ``runtime`` (``"auto"``: ONNX Runtime where it imports, else torch)."""
    folder = _mtcnn_weight_dir()
    if folder is None:
        raise NoFaceDetectorError("MTCNN weights not found (pip install facenet-pytorch)")
    if runtime != "torch":
        from src.media import faces_onnx

        try:
            return faces_onnx.shared_mtcnn(folder)
        except ImportError as exc:
            if runtime == "onnx":
                raise NoFaceDetectorError(f"MTCNN on ONNX Runtime is not available: {exc}") from exc
            logger.info("MTCNN runs on torch: %s", exc)
    return TorchMtcnn(_load_mtcnn_weights())


# NMS with an (N, N) overlap matrix up to this many boxes (N^2 float64s), a loop beyond.
_NMS_MATRIX_MAX = 1024
# With groups (boxes of different groups never overlap), one matrix over every group up to this
# many boxes; beyond, one call per group.
_NMS_GROUPED_MATRIX_MAX = 128


def _nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    thr: float,
    mode: str = "union",
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression on ``(N, 4)`` x1y1x2y2 boxes; returns kept indices.

    Highest score first (ties in input order); a box is dropped when it overlaps a kept one by
    more than ``thr`` (IoU, or intersection over the smaller area with ``mode="min"``). With
    ``groups`` (one integer per box), boxes of different groups never drop each other: one
    call does what one call per group would (the kept indices come in score order overall).
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "union" and _NMS_WITH_OPENCV:
        by_opencv = _nms_opencv(boxes, scores, thr, groups)
        if by_opencv is not None:
            return by_opencv
    order = np.argsort(-scores, kind="stable")
    if groups is not None and n > _NMS_GROUPED_MATRIX_MAX:
        # Many boxes: one call per group (a matrix per group is much smaller than one over
        # all boxes), the kept ones merged in score order.
        groups = np.asarray(groups)
        kept_parts = []
        for value in np.unique(groups):
            members = np.flatnonzero(groups == value)
            kept_parts.append(members[_nms(boxes[members], scores[members], thr, mode)])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        merged = np.concatenate(kept_parts)
        return merged[np.argsort(rank[merged], kind="stable")]
    # One contiguous row per coordinate: NumPy's broadcasts below are several times slower on
    # the strided columns of an (N, 4) array.
    x1, y1, x2, y2 = np.ascontiguousarray(boxes[order, :4].T)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    g = None if groups is None else np.asarray(groups)[order]
    if n <= _NMS_MATRIX_MAX:
        iw = np.maximum(0.0, np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1) + 1)
        ih = np.maximum(0.0, np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1) + 1)
        inter = iw * ih
        if mode == "min":
            over = inter / np.minimum(area[:, None], area) > thr
        else:
            over = inter / (area[:, None] + area - inter) > thr
        if g is not None:
            over &= g[:, None] == g
        # The greedy walk on Python integers used as bit sets (bit j of row i: box i drops
        # box j): a few hundred nanoseconds per box instead of several NumPy calls.
        rows = np.packbits(over, axis=1, bitorder="little")
        done = 0
        kept: list[int] = []
        for i in range(n):
            if not (done >> i) & 1:
                kept.append(i)
                done |= int.from_bytes(rows[i].tobytes(), "little")
        return order[np.asarray(kept, dtype=np.int64)]
    rest = np.arange(n)
    keep: list[int] = []
    while rest.size > 0:
        i = int(rest[0])
        keep.append(i)
        rest = rest[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        if mode == "min":
            ovr = inter / np.minimum(area[i], area[rest])
        else:
            ovr = inter / (area[i] + area[rest] - inter)
        stays = ovr <= thr
        if g is not None:
            stays |= g[rest] != g[i]
        rest = rest[stays]
    return order[np.asarray(keep, dtype=np.int64)]


# Union-mode NMS with OpenCV's (cv2.dnn.NMSBoxes: the same greedy rule, in C++) where it can
# give the same answer: float32 scores above 0 (it keeps only scores above a threshold >= 0).
_NMS_WITH_OPENCV = hasattr(getattr(cv2, "dnn", None), "NMSBoxesBatched")


def _nms_opencv(
    boxes: np.ndarray, scores: np.ndarray, thr: float, groups: np.ndarray | None
) -> np.ndarray | None:
    """:func:`_nms` (``mode="union"``) by ``cv2.dnn.NMSBoxes`` (``NMSBoxesBatched`` with
    ``groups``), or None where the scores are not float32 values above 0.

    OpenCV sorts the scores (float32) in descending order with ties in input order, keeps a
    box when its IoU with every kept box is at most ``thr``, and measures boxes as ``x, y,
    width, height`` doubles: ``x2 - x1 + 1`` wide, as here. Its IoU is rounded to float32
    before the comparison, which can only matter for an IoU within ~1e-7 of ``thr``.
    With groups it shifts each group's boxes apart (exact for the integer boxes of P-Net).
    """
    scores32 = scores.astype(np.float32)
    if not (scores32.min() > 0 and np.array_equal(scores32, scores)):
        return None
    rects = boxes[:, :4].astype(np.float64)  # a copy: x, y, width, height below
    rects[:, 2:] -= rects[:, :2] - 1
    # (Lists: OpenCV's bindings convert them faster than arrays.)
    if groups is None:
        kept = cv2.dnn.NMSBoxes(rects.tolist(), scores32.tolist(), 0.0, thr)
    else:
        ids = np.asarray(groups).tolist()
        kept = cv2.dnn.NMSBoxesBatched(rects.tolist(), scores32.tolist(), ids, 0.0, thr)
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def _rerec(b: np.ndarray) -> np.ndarray:
    """Make x1y1x2y2 boxes square around their centre (in place on a copy)."""
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


class _Pixels:
    """The image and its halvings, from which the pyramid levels and the crops are resized.

    Coordinates are those of the detection image, ``det_w x det_h`` (the image itself, or its
    downscale when it is larger than ``max_side``), which is never made. Each pyramid level
    and each crop is resized from the smallest halving that keeps the last step a shrink by
    no more than ``_LEVEL_STEP`` (``_CROP_STEP``), so no resize reads many more pixels than it
    writes. Halvings are exact 2x2 means (OpenCV's fast integer ``INTER_AREA`` on ``uint8``);
    the last step is ``INTER_AREA`` on ``float32`` (OpenCV's faster path for fractional
    ratios). P-Net's candidates per pyramid level are kept (:meth:`pnet_candidates`), so that
    a second search over more levels of the same image does not run P-Net again.
    """

    def __init__(self, rgb: np.ndarray, det_w: int, det_h: int) -> None:
        self.halvings = [rgb]
        self.floats: dict[int, np.ndarray] = {}
        self.det_w, self.det_h = det_w, det_h
        # Pixels of the image per pixel of the detection image, per axis.
        self.kx = rgb.shape[1] / det_w
        self.ky = rgb.shape[0] / det_h
        self.candidates: dict[float, np.ndarray] = {}
        # R-/O-Net outputs per box (its four float64 coordinates' bytes): (outputs, row).
        self.scored: dict[int, dict[bytes, tuple[tuple[np.ndarray, ...], int]]] = {24: {}, 48: {}}

    def halving(self, j: int) -> np.ndarray:
        while len(self.halvings) <= j:
            prev = self.halvings[-1]
            h2, w2 = prev.shape[0] // 2, prev.shape[1] // 2
            if h2 < 1 or w2 < 1:
                return prev
            half = cv2.resize(prev[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
            self.halvings.append(half)
        return self.halvings[j]

    def float_halving(self, j: int) -> np.ndarray:
        src = self.floats.get(j)
        if src is None:
            src = self.floats[j] = self.halving(j).astype(np.float32)
        return src

    @staticmethod
    def _halvings_for(ratio: float, step: float) -> int:
        """Halvings to take before a resize by ``ratio`` (output / image pixels, per side)."""
        j = 0
        while ratio * (2 ** (j + 1)) <= step and j < 30:
            j += 1
        return j

    def level(self, ws: int, hs: int) -> np.ndarray:
        """The detection image resized to ``ws x hs`` (``float32``)."""
        rgb = self.halvings[0]
        ratio = min(ws / rgb.shape[1], hs / rgb.shape[0])
        src = self.float_halving(self._halvings_for(ratio, _LEVEL_STEP))
        if src.shape[1] == ws and src.shape[0] == hs:
            return src
        return cv2.resize(src, (ws, hs), interpolation=cv2.INTER_AREA)

    def pnet_candidates(self, scale: float, nets: MtcnnNets, threshold: float) -> np.ndarray:
        """P-Net's windows at pyramid level ``scale`` scoring ``threshold`` or more: ``(N, 9)``
        float64 rows ``x1, y1, x2, y2, score, 4 x regression``, in row-major window order."""
        cand = self.candidates.get(scale)
        if cand is None:
            hs, ws = int(self.det_h * scale + 1), int(self.det_w * scale + 1)
            prob, reg = nets.pnet(self.level(ws, hs))
            ys, xs = np.nonzero(prob >= threshold)
            cand = np.empty((len(ys), 9), dtype=np.float64)
            if len(ys):
                cand[:, 0] = np.floor((2 * xs + 1) / scale)
                cand[:, 1] = np.floor((2 * ys + 1) / scale)
                cand[:, 2] = np.floor((2 * xs + 12) / scale)
                cand[:, 3] = np.floor((2 * ys + 12) / scale)
                cand[:, 4] = prob[ys, xs]
                cand[:, 5:] = reg[:, ys, xs].T
            self.candidates[scale] = cand
        return cand

    def score(
        self, boxes: np.ndarray, size: int, net: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    ) -> tuple[np.ndarray, ...]:
        """``net`` (R-Net for ``size`` 24, O-Net for 48) on the crops of x1y1x2y2 ``boxes``:
        its outputs, one row per box. A box already scored on this image (an earlier, coarser
        search) is not run again: its crop, hence its outputs, would be the same."""
        cache = self.scored[size]
        keys = [row.tobytes() for row in np.ascontiguousarray(boxes[:, :4])]
        todo = [i for i, key in enumerate(keys) if key not in cache]
        if todo:
            fresh = net(self.crops(boxes if len(todo) == len(keys) else boxes[todo], size))
            for j, i in enumerate(todo):
                cache[keys[i]] = (fresh, j)
            if len(todo) == len(keys):
                return fresh
        rows = [cache[key] for key in keys]
        count = len(rows[0][0])
        return tuple(np.stack([out[k][j] for out, j in rows]) for k in range(count))

    def crops(self, boxes: np.ndarray, size: int) -> np.ndarray:
        """``size x size`` ``float32`` crops of x1y1x2y2 boxes, clamped to the image and
        stretched as facenet-pytorch does (an empty crop is black)."""
        n = len(boxes)
        out = np.zeros((n, size, size, 3), dtype=np.float32)
        if n == 0:
            return out
        bi = np.trunc(boxes[:, :4]).astype(np.int64)
        x1 = np.maximum(bi[:, 0], 1) - 1
        y1 = np.maximum(bi[:, 1], 1) - 1
        x2 = np.minimum(bi[:, 2], self.det_w)
        y2 = np.minimum(bi[:, 3], self.det_h)
        ok = (x2 > x1) & (y2 > y1)
        side = np.minimum((x2 - x1) * self.kx, (y2 - y1) * self.ky)
        # Halvings before each resize (as _halvings_for: the most with ratio * 2^j <= step).
        ratio = size / np.where(ok, side, 1.0)
        j = np.zeros(n, dtype=np.int64)
        for _ in range(30):
            more = ratio * np.exp2(j + 1) <= _CROP_STEP
            if not more.any():
                break
            j += more
        for jk in np.unique(j[ok]).tolist():
            self.halving(jk)
        j = np.minimum(j, len(self.halvings) - 1)  # (an image too small to halve that often)
        for jk in np.unique(j[ok]).tolist():
            self.float_halving(jk)  # made once, before the loop below reads it
        # The box in the halving's pixels (Python's round and NumPy's both round half to even).
        f = np.exp2(-j)
        c0 = np.round(x1 * (self.kx * f)).astype(np.int64)
        r0 = np.round(y1 * (self.ky * f)).astype(np.int64)
        c1 = np.maximum(np.round(x2 * (self.kx * f)).astype(np.int64), c0 + 1)
        r1 = np.maximum(np.round(y2 * (self.ky * f)).astype(np.int64), r0 + 1)
        rows = np.stack([j, r0, r1, c0, c1], axis=1)[ok].tolist()
        for k, (jk, a, b, c, d) in zip(np.flatnonzero(ok).tolist(), rows, strict=True):
            patch = self.floats[jk][a:b, c:d]
            if patch.size:
                cv2.resize(patch, (size, size), dst=out[k], interpolation=cv2.INTER_AREA)
        return out


# The last resize of a pyramid level (a crop) shrinks by at most this much: halvings first.
_LEVEL_STEP = 0.5
_CROP_STEP = 1.0


def _pyramid_scales(h: int, w: int, min_face_size: int, factor: float) -> list[float]:
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales: list[float] = []
    s = m
    while minl >= 12:
        scales.append(s)
        s *= factor
        minl *= factor
    return scales


_Raw = list[tuple[np.ndarray, float, np.ndarray]]


def _mtcnn_stages(
    pixels: _Pixels,
    scales: list[float],
    nets: MtcnnNets,
    thresholds: tuple[float, float, float],
) -> _Raw:
    """facenet-pytorch's ``detect_face`` over the pyramid levels ``scales``."""
    # Stage 1: P-Net over the image pyramid; NMS within each level (one grouped call), then
    # over all levels.
    per_level = [pixels.pnet_candidates(scale, nets, thresholds[0]) for scale in scales]
    counts = [len(c) for c in per_level]
    if not any(counts):
        return []
    cand = np.concatenate(per_level, axis=0)
    level = np.repeat(np.arange(len(per_level)), counts)
    # The kept boxes come in score order, ties in level order then window order: the order in
    # which the next NMS, which sorts by score, sees them after one call per level too.
    boxes = cand[_nms(cand[:, :4], cand[:, 4], 0.5, groups=level)]
    boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    b = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * regw,
            boxes[:, 1] + boxes[:, 6] * regh,
            boxes[:, 2] + boxes[:, 7] * regw,
            boxes[:, 3] + boxes[:, 8] * regh,
            boxes[:, 4],
        ],
        axis=1,
    )
    b = _rerec(b)

    # Stage 2: R-Net on 24x24 crops.
    score, reg = pixels.score(b, 24, nets.rnet)
    ok = score > thresholds[1]
    b = np.concatenate([b[ok, :4], score[ok, None]], axis=1)
    mv = reg[ok]
    if len(b) == 0:
        return []
    keep = _nms(b[:, :4], b[:, 4], 0.7)
    b = _rerec(_bbreg(b[keep], mv[keep]))

    # Stage 3: O-Net on 48x48 crops, with landmarks.
    score, reg, pts = pixels.score(b, 48, nets.onet)
    ok = score > thresholds[2]
    if not ok.any():
        return []
    b = np.concatenate([b[ok, :4], score[ok, None]], axis=1)
    mv = reg[ok]
    pts = pts[ok]
    wi = b[:, 2] - b[:, 0] + 1
    hi = b[:, 3] - b[:, 1] + 1
    px = wi[:, None] * pts[:, :5] + b[:, 0:1] - 1
    py = hi[:, None] * pts[:, 5:10] + b[:, 1:2] - 1
    lm = np.stack([px, py], axis=2)
    b = _bbreg(b, mv)
    keep = _nms(b[:, :4], b[:, 4], 0.7, mode="min")
    return [(b[i, :4], float(b[i, 4]), lm[i].astype(np.float32)) for i in keep]


# Largest-face search: the pyramid levels whose P-Net window is at least this fraction of the
# image's shorter side (the first fraction that leaves levels on both sides) are searched first:
# the large faces, a small share of the pixels and of the false candidates ...
_COARSE_FRACTIONS = (1 / 8, 1 / 4)
# ... and the other levels are skipped when a face found there has both sides at least this
# many times their largest window (no face they could find would be larger).
_SKIP_FINE_FACTOR = 2.0


def _mtcnn_detect(
    rgb: np.ndarray,
    det_size: tuple[int, int],
    nets: MtcnnNets,
    min_face_size: int,
    thresholds: tuple[float, float, float],
    factor: float,
    min_score: float = 0.0,
    largest_only: bool = False,
) -> _Raw:
    """``[(x1y1x2y2 float box, score, (5, 2) landmarks), ...]`` in detection-image pixels.

    facenet-pytorch's ``detect_face``, with the pixels read from ``rgb`` at ``det_size``
    (see :class:`_Pixels`) and the networks behind :class:`MtcnnNets`.

    With ``largest_only`` the answer is meant for the largest face alone: the coarse pyramid
    levels (large faces: P-Net's window at least ``_COARSE_FRACTIONS`` of the shorter side)
    are searched first, and when they find a face (scoring ``min_score`` or more) at least
    ``_SKIP_FINE_FACTOR`` times the fine levels' largest window, the fine levels, which hold
    most of the pixels and most of the false candidates, are skipped: no face they could find
    would be larger. Otherwise every level is searched, as without ``largest_only``, reusing
    what the coarse search computed (P-Net per level, R-/O-Net per box: see
    :class:`_Pixels`), so that it costs little more than searching every level at once.
    """
    w, h = det_size
    pixels = _Pixels(rgb, w, h)
    scales = _pyramid_scales(h, w, min_face_size, factor)
    if largest_only:
        for fraction in _COARSE_FRACTIONS:
            split = 12.0 / (fraction * min(h, w))  # scales above this are fine
            coarse = [s for s in scales if s <= split]
            fine = [s for s in scales if s > split]
            if not coarse or not fine:
                continue
            found = [
                f for f in _mtcnn_stages(pixels, coarse, nets, thresholds) if f[1] >= min_score
            ]
            if found:
                box = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
                side = min(box[2] - box[0], box[3] - box[1])
                if side >= _SKIP_FINE_FACTOR * 12.0 / min(fine):
                    return found
            break
    return _mtcnn_stages(pixels, scales, nets, thresholds)


# --------------------------------------------------------------------------------------------
# Haar cascades (OpenCV 4.x only)
# --------------------------------------------------------------------------------------------

_HAAR_FILES = (
    "haarcascade_frontalface_default.xml",
    "haarcascade_frontalface_alt2.xml",
    "haarcascade_profileface.xml",
)


def _haar_paths() -> list[str] | None:
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder:
        return None
    paths = [os.path.join(folder, f) for f in _HAAR_FILES]
    return paths if os.path.isfile(paths[0]) else None


def available_backends() -> list[str]:
    """Installed back-ends, in ``"auto"`` preference order."""
    out = []
    if _mtcnn_weight_dir() is not None:
        out.append("mtcnn")
    if _haar_paths() is not None:
        out.append("haar")
    return out


# --------------------------------------------------------------------------------------------
# Public detector
# --------------------------------------------------------------------------------------------


class FaceDetector:
    """Offline face detector, safe to share between threads.

    Args:
        backend: ``"mtcnn"``, ``"haar"`` or ``"auto"`` (MTCNN where installed, else Haar).
        min_face_size: smallest face side searched for, in pixels of the (possibly downscaled)
            detection image.
        max_side: images whose longer side exceeds this are downscaled for detection (boxes are
            mapped back to the original image). ``None`` disables it.
        thresholds: MTCNN P/R/O-Net score thresholds.
        min_score: faces scoring below this are dropped (MTCNN only).
        runtime: what runs MTCNN's networks: ``"onnx"`` (ONNX Runtime, one thread per call,
            no torch on the calling thread), ``"torch"``, or ``"auto"`` (ONNX Runtime where
            ``onnxruntime`` imports, else torch). The pre- and post-processing are the same.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        min_face_size: int = 40,
        max_side: int | None = 1024,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_score: float = 0.9,
        runtime: Runtime = "auto",
    ) -> None:
        avail = available_backends()
        if backend == "auto":
            if not avail:
                raise NoFaceDetectorError(
                    "no face detector installed: `pip install --no-deps facenet-pytorch==2.6.0` "
                    "(MTCNN weights) or use opencv-python-headless 4.x (Haar cascades)"
                )
            backend = "mtcnn" if "mtcnn" in avail else "haar"
        elif backend not in avail:
            raise NoFaceDetectorError(f"face detector back-end {backend!r} is not installed")
        self.backend: str = backend
        self.min_face_size = int(min_face_size)
        self.max_side = max_side
        self.thresholds = thresholds
        self.factor = float(factor)
        self.min_score = float(min_score)
        self._local = threading.local()
        self._nets: MtcnnNets | None = None
        self.runtime: str | None = None
        if backend == "mtcnn":
            if runtime not in ("auto", "onnx", "torch"):
                raise ValueError(f"unknown MTCNN runtime {runtime!r}")
            self._nets = _mtcnn_nets(runtime)
            self.runtime = self._nets.runtime

    # -- Haar: one CascadeClassifier set per thread (they are not thread-safe) --
    def _cascades(self) -> list[Any]:
        cascades: list[Any] | None = getattr(self._local, "cascades", None)
        if cascades is None:
            paths = _haar_paths() or []
            make = getattr(cv2, "CascadeClassifier")  # noqa: B009 (not in OpenCV 5 wheels)
            cascades = [make(p) for p in paths if os.path.isfile(p)]
            self._local.cascades = cascades
        return cascades

    def _detect_haar(self, rgb: np.ndarray) -> list[Face]:
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        ms = (self.min_face_size, self.min_face_size)
        cascades = self._cascades()
        for k, cascade in enumerate(cascades):
            found = list(cascade.detectMultiScale(gray, 1.1, 5, minSize=ms))
            if k == 2 and not found:  # profile cascade is left-facing only: try mirrored
                width = gray.shape[1]
                flipped = cascade.detectMultiScale(cv2.flip(gray, 1), 1.1, 5, minSize=ms)
                found = [(width - x - w, y, w, h) for (x, y, w, h) in flipped]
            if found:
                return [Face((int(x), int(y), int(w), int(h)), 1.0) for (x, y, w, h) in found]
        return []

    def _detect_mtcnn(
        self, rgb: np.ndarray, det_size: tuple[int, int], largest_only: bool
    ) -> list[Face]:
        assert self._nets is not None
        raw = _mtcnn_detect(
            rgb,
            det_size,
            self._nets,
            self.min_face_size,
            self.thresholds,
            self.factor,
            min_score=self.min_score,
            largest_only=largest_only,
        )
        faces = []
        for box, score, lm in raw:
            if score < self.min_score:
                continue
            faces.append(Face(_to_xywh(box), score, lm))
        return faces

    def detect_faces(self, rgb: np.ndarray) -> list[Face]:
        """All faces, largest first, with scores (and landmarks for MTCNN)."""
        return self._detect(rgb, largest_only=False)

    def detect_largest(self, rgb: np.ndarray) -> Face | None:
        """The largest face (the first of :meth:`detect_faces`), or None.

        MTCNN looks for small faces only when it found no clearly larger one, which makes a
        video frame with a face in it several times cheaper; the face is the one
        :meth:`detect_faces` finds largest.
        """
        faces = self._detect(rgb, largest_only=True)
        return faces[0] if faces else None

    def _detect(self, rgb: np.ndarray, largest_only: bool) -> list[Face]:
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = 1.0
        size = (w, h)
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if self.backend == "mtcnn":
            # MTCNN reads the pixels at ``size`` itself, without making the downscaled image.
            faces = self._detect_mtcnn(rgb, size, largest_only)
        else:
            img = rgb if size == (w, h) else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            faces = self._detect_haar(img)
        out = []
        for f in faces:
            x, y, bw, bh = (v / scale for v in f.box)
            box = _clip_box((x, y, x + bw, y + bh), w, h)
            if box[2] <= 1 or box[3] <= 1:
                continue
            lm = None if f.landmarks is None else (f.landmarks / scale).astype(np.float32)
            out.append(Face(box, f.score, lm))
        out.sort(key=lambda f: (-f.area, -f.score, f.box))
        return out

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes ``(x, y, w, h)``, largest first."""
        return [f.box for f in self.detect_faces(rgb)]


def _to_xywh(b: np.ndarray) -> Box:
    x1, y1, x2, y2 = (float(v) for v in b[:4])
    return (round(x1), round(y1), round(x2 - x1), round(y2 - y1))


def _clip_box(xyxy: tuple[float, float, float, float], w: int, h: int) -> Box:
    x1 = round(min(max(xyxy[0], 0.0), w))
    y1 = round(min(max(xyxy[1], 0.0), h))
    x2 = round(min(max(xyxy[2], 0.0), w))
    y2 = round(min(max(xyxy[3], 0.0), h))
    return (x1, y1, x2 - x1, y2 - y1)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {rgb.dtype}")
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------------------------
# Cropping
# --------------------------------------------------------------------------------------------


def crop_box(box: Box, margin: float = 1.3) -> Box:
    """Square box ``(x, y, side, side)`` centred on ``box`` with side ``margin * max(w, h)``.

    May extend past the image; :func:`crop_face` pads in that case.
    """
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"empty box {box}")
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    side = max(1, round(margin * max(w, h)))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(np.floor(cx - side / 2.0 + 0.5))
    y0 = int(np.floor(cy - side / 2.0 + 0.5))
    return (x0, y0, side, side)


def crop_face(
    rgb: np.ndarray,
    box: Box,
    margin: float = 1.3,
    size: int | None = None,
    pad_mode: Literal["replicate", "constant"] = "replicate",
) -> np.ndarray:
    """Square crop centred on ``box`` with side ``margin * max(w, h)``.

    Parts of the square outside the image are filled by edge replication (``pad_mode=
    "replicate"``) or zeros (``"constant"``). With ``size`` the crop is resized to
    ``size x size`` (area interpolation when shrinking, bicubic when enlarging).
    """
    rgb = _check_rgb(rgb)
    h, w = rgb.shape[:2]
    x0, y0, side, _ = crop_box(box, margin)
    x1, y1 = x0 + side, y0 + side
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"box {box} does not overlap the {w}x{h} image")
    crop = rgb[cy0:cy1, cx0:cx1]
    top, left = cy0 - y0, cx0 - x0
    bottom, right = y1 - cy1, x1 - cx1
    if top or left or bottom or right:
        border = cv2.BORDER_REPLICATE if pad_mode == "replicate" else cv2.BORDER_CONSTANT
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, border, value=(0, 0, 0))
    else:
        crop = crop.copy()
    if size is not None and crop.shape[0] != size:
        interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC
        crop = cv2.resize(crop, (size, size), interpolation=interp)
    return np.ascontiguousarray(crop)


def largest_face_crop(
    rgb: np.ndarray,
    detector: FaceDetector,
    margin: float = 1.3,
    size: int | None = None,
) -> np.ndarray | None:
    """Crop of the largest detected face (see :func:`crop_face`), or None if none is found."""
    face = detector.detect_largest(rgb)
    if face is None:
        return None
    return crop_face(rgb, face.box, margin=margin, size=size)
