"""int8: ONNX Runtime static quantisation of the fp32 export, with an accuracy gate.

``quantize_int8(checkpoint, calibration_dir)`` takes the fp32 ``model.onnx`` beside the
checkpoint (it must match the checkpoint's SHA-256: export it first), runs ONNX Runtime's
``quant_pre_process`` (shape inference, graph clean-up), then ``quantize_static`` in QDQ format,
per-channel int8 weights and uint8 activations, calibrated on the images of ``calibration_dir``
prepared exactly as serving prepares them (decoded RGB -> ``build_crop`` -> the backend's own
float32 normalisation; the demo splits are face crops already, as training reads them).

**Accuracy gate:** the fp32 and int8 graphs then score labelled evaluation splits (by default
``test`` and ``test_xmanip`` of the calibration folder's parent, e.g. ``data/demo``) and ROC AUC
is computed with :func:`src.train.metrics.compute_metrics`. The int8 file is *offered* only when
the AUC drops by at most :data:`MAX_AUC_DROP` on every split; otherwise it is still written, for
inspection, but marked ``dfd.int8_offered=false`` and the backend refuses to load it. The file
(``model.int8.onnx``) carries the fp32 export's metadata and checkpoint SHA-256, plus
``dfd.precision=int8``, the offer and the measured figures (``dfd.int8_accuracy``, JSON).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from src.core.errors import CheckpointError, DatasetError, DeepfakeError
from src.export.onnx import image_files, write_atomically
from src.models.backends import onnxruntime as onnx_backend
from src.models.backends.onnxruntime import OnnxRuntimeBackend
from src.models.checkpoint import ModelMetadata
from src.models.transforms import build_crop
from src.train.dataset import Sample, load_split, read_rgb
from src.train.metrics import compute_metrics

logger = logging.getLogger(__name__)

MAX_AUC_DROP = 0.01
"""Largest ROC AUC drop (fp32 - int8) on any evaluation split for the int8 file to be offered."""
DEFAULT_EVAL_SPLITS = ("test", "test_xmanip")
CALIBRATION_BATCH = 16
MAX_CALIBRATION_IMAGES = 1024
SCORE_BATCH = 64
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


class QuantizationError(DeepfakeError):
    """int8 quantisation could not run (no fp32 export, no calibration or evaluation data)."""

    code = "export_int8"


@dataclass(frozen=True)
class SplitAccuracy:
    """ROC AUC of fp32 and int8 on one labelled split, and how far their scores differ."""

    split: str
    n: int
    auc_fp32: float
    auc_int8: float
    max_abs_diff: float  # largest |fake_prob difference| between fp32 and int8

    @property
    def drop(self) -> float:
        return self.auc_fp32 - self.auc_int8


@dataclass(frozen=True)
class Int8Result:
    path: Path
    offered: bool
    max_auc_drop: float
    splits: list[SplitAccuracy]
    calibration_images: int
    calibrate_method: str


Evaluate = Callable[[OnnxRuntimeBackend, OnnxRuntimeBackend, str, Sequence[Sample]], SplitAccuracy]


# ---------------------------------------------------------------------------- data
def crops_of(files: Sequence[Path], metadata: ModelMetadata) -> Iterator[np.ndarray]:
    """uint8 crops as training and evaluation read the images: RGB, then ``build_crop``."""
    crop = build_crop(metadata)
    for file in files:
        yield crop(read_rgb(file))


class CropReader(CalibrationDataReader):
    """Feeds normalised NCHW float32 batches made by the fp32 backend's own ``prepare_batch``."""

    def __init__(self, files: Sequence[Path], backend: OnnxRuntimeBackend, batch: int) -> None:
        self._files = list(files)
        self._backend = backend
        self._batch = batch
        self.rewind()

    def rewind(self) -> None:
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._files):
            return None
        chunk = self._files[self._position : self._position + self._batch]
        self._position += len(chunk)
        crops = list(crops_of(chunk, self._backend.metadata))
        return {onnx_backend.INPUT_NAME: self._backend.prepare_batch(crops)}


def calibration_files(
    calibration_dir: str | Path, limit: int = MAX_CALIBRATION_IMAGES
) -> list[Path]:
    """The images under ``calibration_dir``, evenly thinned to at most ``limit``."""
    folder = Path(calibration_dir)
    if not folder.is_dir():
        raise QuantizationError(f"calibration folder not found: {folder}")
    try:
        files = image_files([folder])
    except CheckpointError as exc:
        raise QuantizationError(exc.message) from exc
    if not files:
        raise QuantizationError(f"no images in the calibration folder {folder}")
    if len(files) > limit:
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in picks]
    return files


# ---------------------------------------------------------------------------- scoring
def score_samples(
    backend: OnnxRuntimeBackend, samples: Sequence[Sample], batch_size: int = SCORE_BATCH
) -> list[float]:
    """Fake probabilities of ``samples`` through ``backend`` (crops as :func:`crops_of`)."""
    files = [s.path for s in samples]
    scores: list[float] = []
    for start in range(0, len(files), batch_size):
        crops = list(crops_of(files[start : start + batch_size], backend.metadata))
        scores += [score.fake_prob for score in backend.score(crops)]
    return scores


def evaluate_split(
    backend: OnnxRuntimeBackend, samples: Sequence[Sample], threshold: float | None = None
) -> dict[str, float]:
    """``compute_metrics`` (frame and video level) of one ONNX backend on labelled samples."""
    scores = score_samples(backend, samples)
    return compute_metrics(
        [s.label for s in samples],
        scores,
        groups=[s.group for s in samples],
        threshold=backend.metadata.threshold if threshold is None else threshold,
    )


def compare_split(
    fp32: OnnxRuntimeBackend, int8: OnnxRuntimeBackend, split: str, samples: Sequence[Sample]
) -> SplitAccuracy:
    """fp32 and int8 ROC AUC on one split."""
    labels = [s.label for s in samples]
    groups = [s.group for s in samples]
    threshold = fp32.metadata.threshold
    a, b = score_samples(fp32, samples), score_samples(int8, samples)
    auc_a = compute_metrics(labels, a, groups=groups, threshold=threshold)["auc"]
    auc_b = compute_metrics(labels, b, groups=groups, threshold=threshold)["auc"]
    diff = float(np.max(np.abs(np.subtract(a, b)))) if a else 0.0
    return SplitAccuracy(split, len(samples), auc_a, auc_b, diff)


# ---------------------------------------------------------------------------- quantisation
def quantize_graph(
    fp32_graph: bytes,
    reader: CalibrationDataReader,
    *,
    calibrate_method: str = "minmax",
) -> bytes:
    """QDQ, per-channel int8 weights, uint8 activations; ``quant_pre_process`` first."""
    with tempfile.TemporaryDirectory(prefix="dfd-int8-") as folder:
        source, prepared, out = (Path(folder) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32_graph)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CALIBRATION_METHODS[calibrate_method],
        )
        return out.read_bytes()


def quantize_int8(
    checkpoint: str | Path,
    calibration_dir: str | Path,
    *,
    eval_data: str | Path | None = None,
    eval_splits: Sequence[str] = DEFAULT_EVAL_SPLITS,
    max_auc_drop: float = MAX_AUC_DROP,
    calibrate_method: str = "minmax",
    evaluate: Evaluate = compare_split,
) -> Int8Result:
    """Quantise the fp32 export of ``checkpoint`` and write ``model.int8.onnx`` beside it.

    ``eval_data`` (default: ``calibration_dir``'s parent) holds the labelled ``eval_splits``
    (``load_split``'s layouts). The file is offered only when every split's AUC drop is at most
    ``max_auc_drop``. Raises :class:`QuantizationError` when there is nothing to quantise or
    evaluate, :class:`CheckpointError` when the fp32 export is missing or stale.
    """
    if calibrate_method not in CALIBRATION_METHODS:
        known = ", ".join(CALIBRATION_METHODS)
        raise QuantizationError(f"unknown calibration method {calibrate_method!r}; known: {known}")
    checkpoint = Path(checkpoint)
    fp32_graph, info = onnx_backend.check_export(checkpoint, "fp32")
    fp32 = onnx_backend.from_bytes(fp32_graph, info.metadata, source="fp32 export")
    files = calibration_files(calibration_dir)
    data_dir = Path(eval_data) if eval_data is not None else Path(calibration_dir).parent
    try:
        split_samples = {split: load_split(data_dir, split) for split in eval_splits}
    except DatasetError as exc:
        raise QuantizationError(f"evaluation data: {exc}") from exc
    if not split_samples:
        raise QuantizationError("no evaluation split given")

    reader = CropReader(files, fp32, CALIBRATION_BATCH)
    int8_graph = quantize_graph(fp32_graph, reader, calibrate_method=calibrate_method)
    int8 = onnx_backend.from_bytes(int8_graph, info.metadata, source="int8 graph")
    results = [evaluate(fp32, int8, split, samples) for split, samples in split_samples.items()]
    offered = all(
        not math.isnan(r.drop) and r.drop <= max_auc_drop for r in results
    )  # NaN AUC (one class only) is no evidence: not offered
    accuracy = {
        "max_auc_drop": max_auc_drop,
        "calibration_images": len(files),
        "calibrate_method": calibrate_method,
        "splits": [{**asdict(r), "drop": r.drop} for r in results],
    }
    props = _props_of(fp32_graph)
    props.update(
        {
            onnx_backend.PRECISION_KEY: "int8",
            onnx_backend.OFFERED_KEY: "true" if offered else "false",
            onnx_backend.ACCURACY_KEY: json.dumps(accuracy, separators=(",", ":")),
        }
    )
    props.pop(onnx_backend.PARITY_KEY, None)  # the fp32 export's parity with torch
    props.pop(onnx_backend.PARITY_CROPS_KEY, None)
    if onnx_backend.file_sha256(checkpoint) != info.checkpoint_sha256:
        raise CheckpointError(f"{checkpoint} changed during quantisation; run it again")
    path = onnx_backend.export_path(checkpoint, "int8")
    write_atomically(path, _with_props(int8_graph, props))
    logger.info(
        "int8 export written",
        extra={"path": str(path), "offered": offered, "accuracy": accuracy},
    )
    return Int8Result(path, offered, max_auc_drop, results, len(files), calibrate_method)


def _props_of(graph: bytes) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(graph).metadata_props}


def _with_props(graph: bytes, props: dict[str, str]) -> bytes:
    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
