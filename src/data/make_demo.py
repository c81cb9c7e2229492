"""Build the offline demo data set: real face photos and self-blended fakes, split by identity.

No deepfake data set can be downloaded here, so this builds an honest substitute from the few real
face photos that pip packages ship (see :mod:`src.data.sources`):

* **real**: augmented views of each face (crop jitter and scale around the face, small rotation,
  flip, colour jitter);
* **fake** (train/val/test): a self-blended image (SBI) of the *same* view — see
  :mod:`src.data.blend`;
* **test_xmanip**: a held-out manipulation the model never trains on (a cross-identity face swap
  or a 4x-upsampled face region), on the test identities, for a cross-manipulation score.

Every real/fake pair shares one augmented view and one final degradation (optional down/up
resize, then a JPEG encode with a random quality): the two images differ only inside the blend
mask, so no global cue (resampling, JPEG quality, colour, framing) separates the classes.

Usage::

    python -m src.data.make_demo --out data/demo [--seed 0] [--per-identity 120] [--size 224]
    python -m src.data.make_demo --samples-out examples/   # 2 real + 2 fake test-identity images

Same arguments -> byte-identical files (every random draw comes from ``numpy.random.Generator``s
seeded from ``--seed`` and the sample's identity/index; JPEG encoding is deterministic for a given
Pillow/libjpeg build).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
from src.data.sources import Identity, load_identities

__all__ = [
    "Degradation",
    "View",
    "build",
    "colour_jitter",
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
    "write_samples",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
XMANIP_SPLIT = "test_xmanip"
MANIFEST_COLUMNS = ("path", "split", "label", "identity", "source", "manipulation")
DEFAULT_PER_IDENTITY = 120
DEFAULT_SIZE = 224
N_VAL_IDENTITIES = 2
N_TEST_IDENTITIES = 2


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


def sample_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded from ``seed`` and the keys (strings hashed with CRC-32)."""
    entropy = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        entropy.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(entropy))


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


def make_sbi_pair(ident: Identity, seed: int, index: int, size: int = DEFAULT_SIZE) -> Pair:
    """Real view ``index`` of ``ident`` and its self-blended fake, both JPEG-encoded."""
    rng = sample_rng(seed, "sbi", ident.name, index)
    view, real = _real_and_view(ident, rng, size)
    fake = self_blend(view.image, rng, box=view.box, landmarks=view.landmarks)
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
# Splits and the build
# --------------------------------------------------------------------------------------------


def split_identities(
    names: Sequence[str],
    split_seed: int = 0,
    n_val: int = N_VAL_IDENTITIES,
    n_test: int = N_TEST_IDENTITIES,
) -> dict[str, list[str]]:
    """Disjoint identity lists per split: shuffle the sorted names with ``split_seed``, take
    ``n_test`` for test, ``n_val`` for val, the rest for train."""
    ordered = sorted(set(names))
    if len(ordered) < n_val + n_test + 1:
        raise ValueError(f"need at least {n_val + n_test + 1} identities, got {len(ordered)}")
    random.Random(split_seed).shuffle(ordered)
    test, val, train = ordered[:n_test], ordered[n_test : n_test + n_val], ordered[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


_OWNED = (*SPLITS, XMANIP_SPLIT, "manifest.csv", "meta.json", "README.md")


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous build there, refuse a non-empty folder of something else."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        entries = list(out.iterdir())
        if entries and not (out / "meta.json").is_file():
            raise FileExistsError(f"{out} is not empty and holds no previous demo build")
        for name in _OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build(
    out: str | Path,
    seed: int = 0,
    per_identity: int = DEFAULT_PER_IDENTITY,
    size: int = DEFAULT_SIZE,
    split_seed: int = 0,
    xmanip_per_identity: int | None = None,
    command: str | None = None,
    verbose: bool = False,
) -> dict[str, object]:
    """Write the data set to ``out``; returns the metadata also written to ``meta.json``."""
    if per_identity < 1:
        raise ValueError("per_identity must be >= 1")
    if size < 32:
        raise ValueError("size must be >= 32")
    t0 = time.perf_counter()
    out = Path(out)
    identities, missing = load_identities()
    by_name = {i.name: i for i in identities}
    splits = split_identities(list(by_name), split_seed)
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
                }
            )
            counts.setdefault(split, {"real": 0, "fake": 0})[label] += 1

    for split in SPLITS:
        for label in LABELS:
            (out / split / label).mkdir(parents=True, exist_ok=True)
        for name in splits[split]:
            for i in range(per_identity):
                write(split, by_name[name], i, make_sbi_pair(by_name[name], seed, i, size))
        if verbose:
            print(f"{split}: {counts.get(split)}", flush=True)
    if n_x > 0:
        for label in LABELS:
            (out / XMANIP_SPLIT / label).mkdir(parents=True, exist_ok=True)
        test_ids = [by_name[n] for n in splits["test"]]
        for ident in test_ids:
            # donors: the other test identities (never a training identity)
            donors = [d for d in test_ids if d.name != ident.name]
            for i in range(n_x):
                write(XMANIP_SPLIT, ident, i, make_xmanip_pair(ident, donors, seed, i, size))
        if verbose:
            print(f"{XMANIP_SPLIT}: {counts.get(XMANIP_SPLIT)}", flush=True)

    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    meta: dict[str, object] = {
        "command": command
        or f"python -m src.data.make_demo --out {out} --seed {seed} "
        f"--per-identity {per_identity} --size {size} --split-seed {split_seed}",
        "seed": seed,
        "split_seed": split_seed,
        "per_identity": per_identity,
        "xmanip_per_identity": n_x,
        "size": size,
        "counts": counts,
        "total_images": len(rows),
        "identities": {
            **splits,
            XMANIP_SPLIT: splits["test"] if n_x > 0 else [],
        },
        "sources": {i.name: i.source for i in identities},
        "missing_sources": missing,
        "manipulations": {
            "train/val/test": "sbi (self-blended image)",
            XMANIP_SPLIT: "faceswap:<donor> (cross-identity, donors are other test identities) "
            "or upsample4x (face region downscaled 4x then upscaled)",
        },
        "versions": {
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(meta), encoding="utf-8")
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
    n_ids = len(sources)
    lines = [
        "# Offline demo deepfake data (generated)",
        "",
        f"Generated by `{meta['command']}` (seed {meta['seed']}, split seed "
        f"{meta['split_seed']}). Do not edit: rebuild instead. Same arguments and library "
        "versions give byte-identical files.",
        "",
        "**This is a substitute, not a deepfake benchmark.** Real images are augmented views of "
        f"the {n_ids} faces in photos that pip packages ship; fakes are synthesised from them. "
        "Scores on it show that the pipeline works and that a model learns blending artefacts, "
        "not how it does on real-world deepfakes.",
        "",
        "| split | real | fake | identities |",
        "| --- | --- | --- | --- |",
    ]
    for split, c in counts.items():
        lines.append(
            f"| {split} | {c['real']} | {c['fake']} | {', '.join(idents.get(split, []))} |"
        )
    lines += [
        "",
        "- Layout: `{train,val,test,test_xmanip}/{real,fake}/<identity>_<index>.jpg`;",
        "  `manifest.csv` has `path,split,label,identity,source,manipulation` (use `identity` as",
        "  the video id for video-level metrics).",
        "- Splits are by identity: no person is in two of train/val/test. `test_xmanip` holds",
        "  new views of the test identities.",
        "- Real: random crop (margin 1.2-1.45 x face, centre shift, rotation +-10 deg, flip) and",
        "  colour jitter. Fake (train/val/test): self-blended image (SBI, Shiohara & Yamasaki,",
        "  CVPR 2022) of the same view: the face blended with a colour/frequency/slightly shifted",
        "  copy of itself through a deformed, blurred elliptical face mask.",
        "- Fake (test_xmanip, never trained on): cross-identity face swap (landmark-aligned,",
        "  colour-matched, donors are the other test identities) or the face region 4x",
        "  downscaled then upscaled.",
        "- Each real/fake pair shares the view and the final degradation (optional resize and",
        "  a JPEG quality drawn from 60-95): before that shared encode the two are identical",
        "  outside the blend mask, so no global cue (framing, colour, resampling, JPEG quality)",
        "  separates the classes.",
    ]
    missing = meta.get("missing_sources")
    if missing:
        lines += ["", f"Missing sources: {missing}"]
    return "\n".join(lines) + "\n"


def write_samples(
    out: str | Path, seed: int = 0, size: int = DEFAULT_SIZE, split_seed: int = 0, n: int = 2
) -> list[Path]:
    """``real_i.jpg`` / ``fake_i.jpg`` for ``n`` held-out (test) identities: ``fake_i`` is the
    self-blended image of ``real_i``'s face (same view), both at JPEG quality 95."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identities, _ = load_identities()
    by_name = {i.name: i for i in identities}
    test = split_identities(list(by_name), split_seed)["test"]
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
        description="Build the offline demo data set (real face photos shipped by pip packages "
        "and self-blended fakes, split by identity) and/or a few sample images.",
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
    if args.size < 32:
        parser.error("--size must be >= 32")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m src.data.make_demo", *argv_list])
    try:
        if args.out:
            build(
                args.out,
                seed=args.seed,
                per_identity=args.per_identity,
                size=args.size,
                split_seed=args.split_seed,
                xmanip_per_identity=args.xmanip_per_identity,
                command=command,
                verbose=True,
            )
        if args.samples_out:
            paths = write_samples(args.samples_out, args.seed, args.size, args.split_seed)
            print("wrote " + ", ".join(str(p) for p in paths))
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
