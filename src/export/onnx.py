"""Export a checkpoint's network to ONNX for the ``onnxruntime`` backend, with a parity guard.

The graph takes the *normalised* float32 NCHW batch (normalisation stays in the backends, from the
metadata, so both runtimes share one recipe) and returns logits, with a dynamic batch axis. The
file carries the checkpoint's metadata and the SHA-256 of the checkpoint file in its
``metadata_props`` (keys in ``src/models/backends/onnxruntime.py``), so the backend can refuse an
export of other weights.

Before anything is written, torch and ONNX Runtime score the same uint8 crops (``examples/*.jpg``,
any images given, random and flat crops) through the two backends' own ``score``; when the largest
|fake_prob difference| exceeds :data:`PARITY_TOLERANCE` the export is refused and no file is
written. A passing file is written atomically (temp file, ``os.replace``, mode 0644) and records
the figure it passed with.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from src.core.errors import CheckpointError, DeepfakeError
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends import torch as torch_backend
from src.models.backends.base import Backend
from src.models.checkpoint import ModelMetadata
from src.models.transforms import build_crop

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest |fake_prob difference| between torch and the export that an export may show."""
RANDOM_CROPS = 8
PARITY_BATCH = 32
SINGLE_CROPS = 4  # crops also scored one at a time, so batch 1 of the dynamic axis is checked
MAX_PARITY_IMAGES = 1024
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class ParityError(DeepfakeError):
    """The exported graph does not answer as the checkpoint does under torch."""

    code = "export_parity"


# ---------------------------------------------------------------------------- the export
def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path | None = None,
    *,
    parity_images: Iterable[str | Path] = (),
    tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Export ``checkpoint_path`` to ONNX and return the path written.

    ``out_path`` defaults to the checkpoint's path with ``.onnx`` (``model.pt`` -> ``model.onnx``),
    where the ``onnxruntime`` backend looks for it. ``parity_images`` (files or folders, e.g. the
    demo test split) are scored by both runtimes besides the built-in crops. Raises
    :class:`CheckpointError` for an unreadable checkpoint and :class:`ParityError` (writing
    nothing) when the export disagrees with torch by more than ``tolerance``.
    """
    checkpoint = Path(checkpoint_path)
    out = Path(out_path) if out_path is not None else onnx_backend.export_path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    sha256 = onnx_backend.file_sha256(checkpoint)
    reference = torch_backend.load(checkpoint, "cpu")
    metadata = reference.metadata
    graph = _export_graph(reference.model, metadata.input_size)
    props = {
        onnx_backend.FORMAT_KEY: onnx_backend.EXPORT_FORMAT,
        onnx_backend.METADATA_KEY: onnx_backend.metadata_json(metadata),
        onnx_backend.CHECKPOINT_SHA256_KEY: sha256,
        "dfd.checkpoint_name": checkpoint.name,
        "dfd.torch_version": torch.__version__,
    }
    candidate = onnx_backend.from_bytes(_with_props(graph, props), metadata, source=str(out))
    crops = parity_crops(metadata, parity_images)
    worst = max_fake_prob_difference(reference, candidate, crops)
    if not worst <= tolerance:  # NaN fails too
        raise ParityError(
            f"the ONNX export of {checkpoint} disagrees with torch: max |fake_prob difference| "
            f"{worst:.3g} over {len(crops)} crops > {tolerance:g}; nothing written"
        )
    if onnx_backend.file_sha256(checkpoint) != sha256:
        raise CheckpointError(f"{checkpoint} changed during the export; run it again")
    props[onnx_backend.PARITY_KEY] = f"{worst:.3e}"
    props[onnx_backend.PARITY_CROPS_KEY] = str(len(crops))
    write_atomically(out, _with_props(graph, props))
    logger.info(
        "onnx export written",
        extra={"path": str(out), "checkpoint": str(checkpoint), "parity": worst},
    )
    return out


def _export_graph(model: nn.Module, input_size: int) -> bytes:
    """The network as ONNX bytes (TorchScript exporter): normalised NCHW float32 in, logits
    out, batch axis dynamic."""
    example = torch.zeros(1, 3, input_size, input_size)
    axes = {onnx_backend.INPUT_NAME: {0: "batch"}, onnx_backend.OUTPUT_NAME: {0: "batch"}}
    with tempfile.TemporaryDirectory(prefix="dfd-export-") as folder, warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo's; it is the one that
        # gives ONNX Runtime its fastest CPU graph here (README, "CPU fast path").
        warnings.simplefilter("ignore", DeprecationWarning)
        path = Path(folder) / "graph.onnx"
        torch.onnx.export(
            model.eval(),
            (example,),
            path,
            dynamo=False,
            input_names=[onnx_backend.INPUT_NAME],
            output_names=[onnx_backend.OUTPUT_NAME],
            dynamic_axes=axes,
        )
        return path.read_bytes()


def _with_props(graph: bytes, props: dict[str, str]) -> bytes:
    model = onnx.load_from_string(graph)
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """A temp file in the same folder, fsync, then ``os.replace``; readable by a non-root server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- parity
def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively, at most MAX_PARITY_IMAGES."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(
                p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
        elif entry.is_file():
            found.append(entry)
        else:
            raise CheckpointError(f"parity image not found: {entry}")
    return found[:MAX_PARITY_IMAGES]


def parity_crops(
    metadata: ModelMetadata, images: Iterable[str | Path] = (), *, seed: int = 0
) -> list[np.ndarray]:
    """uint8 crops as serving makes them: ``examples/*.jpg`` and ``images`` resized and
    centre-cropped, random-noise crops, and an all-black and an all-white crop."""
    crop = build_crop(metadata)
    files = sorted(EXAMPLES_DIR.glob("*.jpg")) + image_files(images)
    crops = []
    for file in files:
        with Image.open(file) as image:
            crops.append(crop(np.asarray(image.convert("RGB"))))
    size = metadata.input_size
    rng = np.random.default_rng(seed)
    crops += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(RANDOM_CROPS)]
    crops += [np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)]
    return crops


def max_fake_prob_difference(
    reference: Backend, candidate: Backend, crops: Sequence[np.ndarray]
) -> float:
    """Largest |fake_prob difference| over ``crops``, in batches and (the first few) alone."""
    batches = [crops[i : i + PARITY_BATCH] for i in range(0, len(crops), PARITY_BATCH)]
    batches += [[c] for c in crops[:SINGLE_CROPS]]
    differences = [
        abs(a.fake_prob - b.fake_prob)
        for batch in batches
        for a, b in zip(reference.score(batch), candidate.score(batch), strict=True)
    ]
    return float(np.max(differences))  # NaN propagates, and fails the guard
