"""Finding labelled frames on disk, splitting them by identity, and loading them for training.

Three layouts are understood, tried in this order:

1. ``DIR/manifest.csv`` with columns ``path,label`` and optionally ``split,identity,source``
   (``path`` relative to ``DIR``). Rows without a split are split automatically.
2. ``DIR/{train,val,...}/{real,fake}/*.jpg``: one folder per split.
3. ``DIR/{real,fake}/*.jpg``: one pool, split automatically.

Every sample belongs to a *group*: the manifest's ``identity``, or else the file name before a
``_f<digits>`` frame suffix (``<video>_f00012.png`` belongs to ``<video>``), or else the file
itself. Automatic splits put whole groups on one side, so no video or person is in both.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from src.core.errors import DatasetError
from src.core.labels import LABELS
from src.models.transforms import Preprocess

__all__ = [
    "IMAGE_SUFFIXES",
    "LABELS",
    "MANIFEST_NAME",
    "DatasetError",
    "FrameDataset",
    "PairedShuffle",
    "Sample",
    "TrainAugment",
    "describe",
    "discover_splits",
    "group_from_filename",
    "load_split",
    "pair_units",
    "read_manifest",
    "read_rgb",
    "scan_class_folders",
    "seed_worker",
    "split_by_group",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MANIFEST_NAME = "manifest.csv"
_FRAME_SUFFIX = re.compile(r"^(?P<group>.+)_f\d+$")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into LABELS: 0 real, 1 fake
    group: str
    source: str = ""


def group_from_filename(path: Path) -> str:
    """``clip7_f00012.png`` -> ``clip7``; a name without a frame suffix is its own group."""
    match = _FRAME_SUFFIX.match(path.stem)
    return match.group("group") if match else path.stem


def _label_index(value: str) -> int:
    text = value.strip().lower()
    if text in LABELS:
        return LABELS.index(text)
    if text in {"0", "1"}:
        return int(text)
    raise DatasetError(f"unknown label {value!r}; expected one of {LABELS} or 0/1")


def scan_class_folders(root: Path) -> list[Sample]:
    """Every image under ``root/real`` and ``root/fake`` (recursively), sorted by path."""
    samples: list[Sample] = []
    for label, name in enumerate(LABELS):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                samples.append(Sample(path=path, label=label, group=group_from_filename(path)))
    return samples


def read_manifest(data_dir: Path) -> dict[str, list[Sample]]:
    """Samples from ``data_dir/manifest.csv`` keyed by split (``""`` for rows without one)."""
    manifest = data_dir / MANIFEST_NAME
    splits: dict[str, list[Sample]] = defaultdict(list)
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not {"path", "label"} <= columns:
            raise DatasetError(f"{manifest} needs at least the columns path,label")
        for row in reader:
            path = Path(row["path"])
            if not path.is_absolute():
                path = data_dir / path
            group = (row.get("identity") or "").strip() or group_from_filename(path)
            sample = Sample(
                path=path,
                label=_label_index(row["label"]),
                group=group,
                source=(row.get("source") or "").strip(),
            )
            splits[(row.get("split") or "").strip()].append(sample)
    missing = [s.path for samples in splits.values() for s in samples if not s.path.is_file()]
    if missing:
        raise DatasetError(f"{manifest} lists {len(missing)} missing files, e.g. {missing[0]}")
    return dict(splits)


def split_by_group(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val) by whole groups, reproducibly for a given seed.

    Groups are stratified by the set of labels they hold (only real, only fake, both), so the
    validation side gets its share of each kind. Each stratum with at least two groups gives at
    least one group to each side.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_group[sample.group].append(sample)
    strata: dict[frozenset[int], list[str]] = defaultdict(list)
    for group, members in by_group.items():
        strata[frozenset(s.label for s in members)].append(group)
    rng = random.Random(seed)
    val_groups: set[str] = set()
    for key in sorted(strata, key=lambda k: sorted(k)):
        groups = sorted(strata[key])
        rng.shuffle(groups)
        if len(groups) < 2:
            continue
        count = min(len(groups) - 1, max(1, math.floor(len(groups) * val_fraction + 0.5)))
        val_groups.update(groups[:count])
    if not val_groups and len(by_group) >= 2:
        val_groups.add(sorted(by_group)[rng.randrange(len(by_group))])
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def discover_splits(
    data_dir: str | Path, seed: int = 0, val_fraction: float = 0.2
) -> dict[str, list[Sample]]:
    """Map split name -> samples, with at least ``train`` and ``val`` (see the module doc)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory not found: {data_dir}")
    if (data_dir / MANIFEST_NAME).is_file():
        splits = read_manifest(data_dir)
    elif any(
        (child / name).is_dir()
        for child in data_dir.iterdir()
        for name in LABELS
        if child.name not in LABELS
    ):
        splits = {
            child.name: scan_class_folders(child)
            for child in sorted(data_dir.iterdir())
            if child.is_dir() and child.name not in LABELS
        }
        splits = {name: samples for name, samples in splits.items() if samples}
    elif any((data_dir / name).is_dir() for name in LABELS):
        splits = {"": scan_class_folders(data_dir)}
    else:
        raise DatasetError(
            f"{data_dir} has neither {MANIFEST_NAME}, nor <split>/real|fake folders, "
            "nor real|fake folders"
        )
    unsplit = splits.pop("", [])
    if "train" not in splits:
        if not unsplit:
            raise DatasetError(f"{data_dir} has no training samples")
        splits["train"], splits["val"] = split_by_group(unsplit, val_fraction, seed)
    elif unsplit:
        logger.warning("%d samples without a split are ignored", len(unsplit))
    if not splits.get("val"):
        splits["train"], splits["val"] = split_by_group(splits["train"], val_fraction, seed)
    leaked = {s.group for s in splits["train"]} & {s.group for s in splits["val"]}
    if leaked:
        logger.warning(
            "%d groups appear in both train and val (e.g. %s): validation is optimistic",
            len(leaked),
            sorted(leaked)[0],
        )
    return splits


def read_rgb(path: Path) -> np.ndarray:
    """An image file as an RGB uint8 array."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class TrainAugment:
    """Train-time augmentation of a uint8 RGB array, before the shared preprocessing.

    Random resized crop to ``size``, horizontal flip, colour jitter, then (each with its own
    probability) a Gaussian blur or a down-and-up resample, and a JPEG re-encode. The last two
    make whole-image sharpness and compression uninformative, so the model has to find the
    blending artefacts themselves rather than "this face looks soft".
    """

    size: int
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    resample: float = 0.2
    resample_scale: tuple[float, float] = (0.4, 0.9)
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = rgb.shape[:2]
        top, left, crop_h, crop_w = 0, 0, height, width
        for _ in range(10):
            area = height * width * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = round(math.sqrt(area * aspect))
            h = round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                crop_h, crop_w = h, w
                break
        else:
            side = min(height, width)
            top, left, crop_h, crop_w = (height - side) // 2, (width - side) // 2, side, side
        crop = rgb[top : top + crop_h, left : left + crop_w]
        interpolation = cv2.INTER_AREA if min(crop_h, crop_w) > self.size else cv2.INTER_LINEAR
        out = cv2.resize(crop, (self.size, self.size), interpolation=interpolation)
        if rng.random() < self.flip:
            out = out[:, ::-1]
        return self._degrade(self._jitter(out, rng), rng)

    def _degrade(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        roll = rng.random()
        if roll < self.blur:
            rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(rng.uniform(*self.blur_sigma)))
        elif roll < self.blur + self.resample:
            side = max(8, round(self.size * rng.uniform(*self.resample_scale)))
            small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
            rgb = cv2.resize(small, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.jpeg:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else None
            if decoded is not None:
                rgb = decoded[..., ::-1]
        return np.ascontiguousarray(rgb)

    def _jitter(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = rgb.astype(np.float32)
        image *= rng.uniform(1 - self.brightness, 1 + self.brightness)
        gray = image @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        image = (image - gray.mean()) * rng.uniform(1 - self.contrast, 1 + self.contrast)
        image += gray.mean()
        gray = (image @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        image = gray + (image - gray) * rng.uniform(1 - self.saturation, 1 + self.saturation)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)


class FrameDataset(Dataset[tuple[torch.Tensor, int]]):
    """Labelled frames -> ``(normalised CHW tensor, label)``.

    ``preprocess`` is :func:`src.models.transforms.build_preprocess`'s function, applied last, so
    training sees exactly the normalisation the service applies. ``augment`` (training only) runs
    before it on the uint8 array, with a generator seeded from ``(seed, epoch, index)``: the
    augmentation of a sample depends neither on the worker count nor on where a run resumed.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: Preprocess,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        seed: int = 0,
        augment_keys: Sequence[int] | None = None,
    ) -> None:
        """``augment_keys``: the index each sample's augmentation is seeded with (default: its
        own); the two images of a pair given one key get the same crop, flip, colour and
        degradation draws (:func:`pair_units`)."""
        self.samples = list(samples)
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.augment_keys = list(range(len(samples))) if augment_keys is None else augment_keys
        if len(self.augment_keys) != len(self.samples):
            raise ValueError("augment_keys needs one key per sample")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        rgb = read_rgb(sample.path)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.augment_keys[index]])
            rgb = np.ascontiguousarray(self.augment(rgb, rng))
        return self.preprocess(rgb), sample.label

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.group for s in self.samples]


def pair_units(samples: Sequence[Sample]) -> list[tuple[int, ...]]:
    """The samples grouped into pairs where a real and a fake image are two views of one shot:
    the same file name under ``<split>/real/`` and ``<split>/fake/`` within one group (how
    ``src.data.make_demo`` writes a real image and its self-blended twin). Every other sample is
    a unit of its own. Units come in the order of their first sample."""
    units: dict[tuple[str, str, str], list[int]] = {}
    order: list[list[int]] = []
    for index, sample in enumerate(samples):
        key = (sample.group, sample.path.parent.parent.as_posix(), sample.path.name)
        unit = units.get(key)
        if unit is not None and len(unit) == 1 and samples[unit[0]].label != sample.label:
            unit.append(index)
            continue
        unit = [index]
        units[key] = unit
        order.append(unit)
    return [tuple(unit) for unit in order]


class PairedShuffle(Sampler[int]):
    """Shuffles whole units (:func:`pair_units`), so the real and fake images of a pair are
    next to each other in the order and, with an even batch size, in the same batch: the
    gradient of each pair is the blend's difference alone, as self-blended training is done.
    Draws from ``generator`` (the trainer reseeds it every epoch)."""

    def __init__(self, units: Sequence[tuple[int, ...]], generator: torch.Generator) -> None:
        self.units = list(units)
        self.generator = generator
        self._length = sum(len(unit) for unit in self.units)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        for position in torch.randperm(len(self.units), generator=self.generator).tolist():
            yield from self.units[position]

    def augment_keys(self) -> list[int]:
        """One key per sample: the first index of its unit."""
        keys = [0] * self._length
        for unit in self.units:
            for index in unit:
                keys[index] = unit[0]
        return keys


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    del worker_id
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def describe(samples: Sequence[Sample]) -> str:
    """``"120 images (60 real, 60 fake), 8 groups"``."""
    fake = sum(s.label for s in samples)
    groups = len({s.group for s in samples})
    return f"{len(samples)} images ({len(samples) - fake} real, {fake} fake), {groups} groups"


def load_split(data_dir: str | Path, split: str) -> list[Sample]:
    """The samples of one named split (``manifest.csv`` rows, or ``DIR/<split>/{real,fake}``).

    ``split="all"`` on a flat ``DIR/{real,fake}`` folder returns every image.
    """
    data_dir = Path(data_dir)
    if (data_dir / MANIFEST_NAME).is_file():
        splits = read_manifest(data_dir)
        if split == "all":
            return [s for samples in splits.values() for s in samples]
        if split not in splits:
            raise DatasetError(
                f"{data_dir / MANIFEST_NAME} has no split {split!r} "
                f"(it has {sorted(k for k in splits if k)})"
            )
        return splits[split]
    root = data_dir if split == "all" else data_dir / split
    samples = scan_class_folders(root)
    if not samples:
        raise DatasetError(f"no images under {root}/real or {root}/fake")
    return samples
