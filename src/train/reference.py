"""``python -m src.train.reference``: store a checkpoint's reference statistics for drift.

Each validation image goes through the service's own preparation (decode, the checkpoint's face
crop, resize-and-crop: :class:`src.engine.preprocess.FramePreparer`) and the model, and its
features (``src.monitoring.features``) and calibrated ``fake_prob`` are kept; their
distributions go into the checkpoint's metadata under ``reference``, written atomically, the
weights untouched. Training calls :func:`attach_reference` on ``best.pt`` when it ends; this
command does the same for an existing checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from src.core.device import resolve_device
from src.core.errors import CheckpointError, DatasetError, InputError
from src.engine.preprocess import FramePreparer, PreparedImage, face_cropper_for
from src.media.images import ImageLimits
from src.models.backends import load_backend
from src.models.backends.base import Backend
from src.models.checkpoint import read_checkpoint, save_checkpoint
from src.monitoring.features import FAKE_PROB
from src.monitoring.reference import ReferenceStats, build_reference, with_reference
from src.train.dataset import Sample, load_split

logger = logging.getLogger(__name__)
SCORE_BATCH = 32
# Files on disk are trusted more than uploads: only the sanity limits.
REFERENCE_IMAGE_LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}),
    max_bytes=256 * 1024 * 1024,
    max_pixels=200_000_000,
    max_side=50_000,
    min_side=16,
)


def measure_samples(
    backend: Backend, samples: Sequence[Sample], *, split: str, data: str | None = None
) -> ReferenceStats:
    """Every sample prepared as the service prepares an upload, scored by ``backend``; images
    the service would refuse (no face, unreadable) are left out and counted in the log."""
    preparer = FramePreparer(
        backend.metadata, REFERENCE_IMAGE_LIMITS, face_cropper_for(backend.metadata), measure=True
    )
    values: dict[str, list[float]] = defaultdict(list)
    pending: list[PreparedImage] = []
    refused = 0
    for sample in samples:
        try:
            pending.append(preparer.prepare_bytes(sample.path.read_bytes()))
        except InputError as exc:
            refused += 1
            logger.debug("left out %s: %s", sample.path, exc)
        if len(pending) >= SCORE_BATCH:
            _score_into(backend, pending, values)
            pending = []
    _score_into(backend, pending, values)
    measured = len(values[FAKE_PROB])
    if measured == 0:
        raise DatasetError(f"none of the {len(samples)} {split} images could be prepared")
    if refused:
        logger.warning("%d of %d %s images were left out (refused)", refused, len(samples), split)
    return build_reference(
        values, split=split, n=measured, data=data, temperature=backend.metadata.temperature
    )


def _score_into(
    backend: Backend, prepared: list[PreparedImage], values: dict[str, list[float]]
) -> None:
    if not prepared:
        return
    scores = backend.score([item.crop for item in prepared])
    for item, score in zip(prepared, scores, strict=True):
        for name, value in (item.features or {}).items():
            values[name].append(value)
        values[FAKE_PROB].append(score.fake_prob)


def store_reference(path: Path, reference: ReferenceStats, expected_sha256: str) -> None:
    """Write ``reference`` into the checkpoint's metadata (atomically, weights and training
    state as they were), refusing if the file changed since it was measured."""
    if file_sha256(path) != expected_sha256:
        raise CheckpointError(f"{path} changed while it was being measured; run again")
    loaded = read_checkpoint(path)
    save_checkpoint(
        path, loaded.state_dict, with_reference(loaded.metadata, reference), loaded.training
    )


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def attach_reference(
    checkpoint: Path,
    samples: Sequence[Sample],
    *,
    split: str = "val",
    data: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> ReferenceStats:
    """Measure ``samples`` with ``checkpoint`` and store the result in it."""
    digest = file_sha256(checkpoint)
    backend = load_backend("torch", checkpoint, device=device, threads=threads)
    reference = measure_samples(backend, samples, split=split, data=data)
    store_reference(checkpoint, reference, digest)
    return reference


def summary(reference: ReferenceStats) -> str:
    lines = [f"reference of {reference.n} {reference.split} images:"]
    for name, feature in reference.features.items():
        p5, p50, p95 = (feature.percentiles[i] for i in (5, 50, 95))
        lines.append(
            f"  {name:<13} mean {feature.mean:10.4f}  p5 {p5:10.4f}  p50 {p50:10.4f}  "
            f"p95 {p95:10.4f}  bins {len(feature.proportions)}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.train.reference",
        description="Store the validation distribution of the drift features and fake_prob in "
        "a checkpoint's metadata (what GET /monitoring/drift compares live traffic with).",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint to update")
    parser.add_argument("--data", type=Path, required=True, help="data folder (as for training)")
    parser.add_argument("--split", default="val", help="split to measure (default: val)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--limit", type=int, default=None, help="measure at most this many images (a quick look)"
    )
    return parser


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        samples = load_split(args.data, args.split)
        if args.limit is not None:
            rng = np.random.default_rng(0)  # a spread of the split, not its first folder
            picked = rng.permutation(len(samples))[: args.limit]
            samples = [samples[i] for i in sorted(picked)]
        reference = attach_reference(
            args.checkpoint,
            samples,
            split=args.split,
            data=str(args.data),
            device=resolve_device(args.device),
            threads=args.threads,
        )
    except (CheckpointError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out(summary(reference))
    out(f"stored in {args.checkpoint} (metadata.reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
