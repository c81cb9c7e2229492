"""Offline face detection and face cropping.

Two detector back-ends, both fully offline:

* ``"mtcnn"``: MTCNN (Zhang et al., 2016) with the P/R/O-Net weights that the ``facenet-pytorch``
  wheel ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT licence). The networks are
  re-implemented here with ``torch.nn.functional`` so that ``facenet_pytorch`` itself is never
  imported (its ``__init__`` needs ``requests`` and it pins ``torch<2.3``; install it with
  ``pip install --no-deps facenet-pytorch==2.6.0``). The pipeline follows facenet-pytorch's
  ``detect_face``. It also gives five landmarks per face.
* ``"haar"``: OpenCV Haar cascades from ``cv2.data.haarcascades`` (frontal default, then alt2,
  then profile as fall-backs). OpenCV 5 wheels no longer ship ``cv2.CascadeClassifier`` nor the
  XML files, so this back-end is only available with OpenCV 4.x (or a contrib build plus XMLs).

``FaceDetector(backend="auto")`` picks MTCNN where its weights are installed, else Haar.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)`` throughout; boxes are ``(x, y, w, h)``
in pixels, clipped to the image.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

Box = tuple[int, int, int, int]
Backend = Literal["auto", "mtcnn", "haar"]

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


def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression on ``(N, 4)`` x1y1x2y2 boxes; returns kept indices."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        if mode == "min":
            ovr = inter / np.minimum(area[i], area[rest])
        else:
            ovr = inter / (area[i] + area[rest] - inter)
        order = rest[ovr <= thr]
    return np.asarray(keep, dtype=np.int64)


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


def _crop_batch(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops (clamped to the image, as facenet-pytorch does) resized to ``size``, normalised."""
    h, w = img.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    bi = np.trunc(boxes[:, :4]).astype(np.int64)
    for k, (x1, y1, x2, y2) in enumerate(bi):
        x1, y1 = max(int(x1), 1), max(int(y1), 1)
        x2, y2 = min(int(x2), w), min(int(y2), h)
        patch = img[y1 - 1 : y2, x1 - 1 : x2]
        if patch.size == 0:
            out[k] = 0.0
            continue
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return (out - 127.5) * 0.0078125


def _mtcnn_detect(
    rgb: np.ndarray,
    weights: dict[str, dict[str, Any]],
    min_face_size: int,
    thresholds: tuple[float, float, float],
    factor: float,
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Returns ``[(x1y1x2y2 float box, score, (5, 2) landmarks), ...]``."""
    import torch

    img = rgb.astype(np.float32)
    h, w = img.shape[:2]
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales: list[float] = []
    s = m
    while minl >= 12:
        scales.append(s)
        s *= factor
        minl *= factor

    with torch.inference_mode():
        # Stage 1: P-Net over the image pyramid.
        all_boxes: list[np.ndarray] = []
        for scale in scales:
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            im = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
            t = torch.from_numpy((im - 127.5) * 0.0078125).permute(2, 0, 1)[None]
            reg_t, prob_t = _pnet(t, weights["pnet"])
            prob = prob_t[0, 1].numpy()
            reg = reg_t[0].numpy()
            ys, xs = np.nonzero(prob >= thresholds[0])
            if len(ys) == 0:
                continue
            score = prob[ys, xs]
            q1x = np.floor((2 * xs + 1) / scale)
            q1y = np.floor((2 * ys + 1) / scale)
            q2x = np.floor((2 * xs + 12) / scale)
            q2y = np.floor((2 * ys + 12) / scale)
            cand = np.stack([q1x, q1y, q2x, q2y, score], axis=1)
            cand = np.concatenate([cand, reg[:, ys, xs].T], axis=1)
            all_boxes.append(cand[_nms(cand[:, :4], cand[:, 4], 0.5)])
        if not all_boxes:
            return []
        boxes = np.concatenate(all_boxes, axis=0)
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
        crops = torch.from_numpy(_crop_batch(img, b, 24)).permute(0, 3, 1, 2)
        reg_t, prob_t = _rnet(crops, weights["rnet"])
        score = prob_t[:, 1].numpy()
        ok = score > thresholds[1]
        b = np.concatenate([b[ok, :4], score[ok, None]], axis=1)
        mv = reg_t.numpy()[ok]
        if len(b) == 0:
            return []
        keep = _nms(b[:, :4], b[:, 4], 0.7)
        b = _rerec(_bbreg(b[keep], mv[keep]))

        # Stage 3: O-Net on 48x48 crops, with landmarks.
        crops = torch.from_numpy(_crop_batch(img, b, 48)).permute(0, 3, 1, 2)
        reg_t, pts_t, prob_t = _onet(crops, weights["onet"])
        score = prob_t[:, 1].numpy()
        ok = score > thresholds[2]
        if not ok.any():
            return []
        b = np.concatenate([b[ok, :4], score[ok, None]], axis=1)
        mv = reg_t.numpy()[ok]
        pts = pts_t.numpy()[ok]
        wi = b[:, 2] - b[:, 0] + 1
        hi = b[:, 3] - b[:, 1] + 1
        px = wi[:, None] * pts[:, :5] + b[:, 0:1] - 1
        py = hi[:, None] * pts[:, 5:10] + b[:, 1:2] - 1
        lm = np.stack([px, py], axis=2)
        b = _bbreg(b, mv)
        keep = _nms(b[:, :4], b[:, 4], 0.7, mode="min")
    return [(b[i, :4], float(b[i, 4]), lm[i].astype(np.float32)) for i in keep]


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
    """

    def __init__(
        self,
        backend: Backend = "auto",
        min_face_size: int = 40,
        max_side: int | None = 1024,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_score: float = 0.9,
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
        if backend == "mtcnn":
            self._weights = _load_mtcnn_weights()

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

    def _detect_mtcnn(self, rgb: np.ndarray) -> list[Face]:
        raw = _mtcnn_detect(rgb, self._weights, self.min_face_size, self.thresholds, self.factor)
        faces = []
        for box, score, lm in raw:
            if score < self.min_score:
                continue
            faces.append(Face(_to_xywh(box), score, lm))
        return faces

    def detect_faces(self, rgb: np.ndarray) -> list[Face]:
        """All faces, largest first, with scores (and landmarks for MTCNN)."""
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        scale = 1.0
        img = rgb
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        faces = self._detect_mtcnn(img) if self.backend == "mtcnn" else self._detect_haar(img)
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
    boxes = detector.detect(rgb)
    if not boxes:
        return None
    best = max(boxes, key=lambda b: b[2] * b[3])
    return crop_face(rgb, best, margin=margin, size=size)
