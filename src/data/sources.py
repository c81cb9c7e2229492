"""Real face photos that installed pip packages ship, one identity per detected face.

* ``skimage.data.astronaut()`` (scikit-image; Eileen Collins, public domain).
* ``insightface/data/images/t1.jpg`` (a group photo, 6 faces) and ``Tom_Hanks_54745.png`` (an
  aligned 112x112 face) from the ``insightface`` wheel. The package itself is never imported (its
  ``__init__`` needs onnxruntime): files are located through ``importlib.metadata``. Install it
  with ``pip install --no-deps insightface==2.1``.
* ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` where matplotlib is installed (a dev
  requirement here), located the same way.

Missing optional sources are skipped and reported in the data set's metadata.
"""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from src.media.faces import Box, FaceDetector

__all__ = ["Identity", "find_package_file", "load_identities", "source_photos"]

_INSIGHTFACE_IMAGES = "insightface/data/images"
_GRACE_HOPPER = "matplotlib/mpl-data/sample_data/grace_hopper.jpg"
_MIN_FACE_SIDE = 60  # ignore small or spurious detections in the photos
_MIN_SCORE = 0.95


@dataclass(frozen=True)
class Identity:
    """One person: the full photo and where the face is in it."""

    name: str
    source: str  # which photo (the "video" a face comes from)
    image: np.ndarray = field(repr=False, compare=False)
    box: Box
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)


def find_package_file(distribution: str, relative: str) -> Path | None:
    """A file shipped by an installed distribution, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def source_photos() -> tuple[list[tuple[str, np.ndarray, bool]], list[str]]:
    """``([(source_name, rgb, group_photo), ...], [missing source descriptions])``."""
    photos: list[tuple[str, np.ndarray, bool]] = []
    missing: list[str] = []
    from skimage import data as skdata

    photos.append(("skimage_astronaut", np.ascontiguousarray(skdata.astronaut()), False))
    for name, rel, group in (
        ("insightface_t1", f"{_INSIGHTFACE_IMAGES}/t1.jpg", True),
        ("insightface_tom_hanks", f"{_INSIGHTFACE_IMAGES}/Tom_Hanks_54745.png", False),
    ):
        path = find_package_file("insightface", rel)
        if path is None:
            missing.append(f"{name} (pip install --no-deps insightface==2.1)")
        else:
            photos.append((name, _read_rgb(path), group))
    path = find_package_file("matplotlib", _GRACE_HOPPER)
    if path is None:
        missing.append("matplotlib_grace_hopper (pip install matplotlib)")
    else:
        photos.append(("matplotlib_grace_hopper", _read_rgb(path), False))
    return photos, missing


_IDENTITY_NAMES = {
    "skimage_astronaut": "astronaut",
    "insightface_tom_hanks": "tom_hanks",
    "matplotlib_grace_hopper": "grace_hopper",
}

_cache_lock = threading.Lock()
_cache: tuple[list[Identity], list[str]] | None = None


def load_identities(detector: FaceDetector | None = None) -> tuple[list[Identity], list[str]]:
    """Every identity (sorted by name) and the list of missing sources. Cached per process."""
    global _cache
    with _cache_lock:
        if _cache is None:
            det = detector or FaceDetector()
            identities: list[Identity] = []
            photos, missing = source_photos()
            for source, rgb, group in photos:
                faces = [
                    f
                    for f in det.detect_faces(rgb)
                    if f.score >= _MIN_SCORE and min(f.box[2], f.box[3]) >= _MIN_FACE_SIDE
                ]
                if not faces:
                    missing.append(f"{source} (no face detected)")
                    continue
                if group:
                    faces.sort(key=lambda f: f.box[0])  # left to right
                    for i, f in enumerate(faces):
                        identities.append(
                            Identity(f"t1_{i}", source, rgb, f.box, _rounded(f.landmarks))
                        )
                else:
                    f = faces[0]  # largest
                    name = _IDENTITY_NAMES.get(source, source)
                    identities.append(Identity(name, source, rgb, f.box, _rounded(f.landmarks)))
            identities.sort(key=lambda i: i.name)
            _cache = (identities, missing)
        return list(_cache[0]), list(_cache[1])


def _rounded(lm: np.ndarray | None) -> np.ndarray | None:
    # Round so that tiny float differences between machines do not change the generated data.
    return None if lm is None else np.round(lm.astype(np.float64), 1)
