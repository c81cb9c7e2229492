"""The ONNX Runtime backend: the checkpoint's exported graph (``python -m src.export``) on the CPU.

The export lives beside its checkpoint with the same stem (``model.pt`` -> ``model.onnx``) and
records, in the ONNX model's ``metadata_props``, the checkpoint's metadata and the SHA-256 of the
checkpoint file. :func:`load` takes the *checkpoint* path, as every backend does, and refuses an
export whose recorded hash is not the checkpoint's (it was exported from other weights).

An int8 export (``python -m src.export --int8``, ``src/export/quantize.py``) lives beside it as
``model.int8.onnx``: the same graph statically quantised (QDQ), recording ``dfd.precision=int8``,
the ROC AUC it kept and whether it is *offered* (its AUC drop passed the gate).
``load(..., precision="int8")`` (``DFD_ONNX_PRECISION=int8``) serves it, and refuses one that is
missing, stale (another checkpoint's hash) or not offered.

The graph takes the normalised float32 NCHW batch and returns logits; :meth:`score` normalises
uint8 crops with NumPy exactly as the torch backend does (``transforms.normalization``, then
``(pixel - mean) * inv_std`` in float32) and reads the fake column by the checkpoint's labels.
Nothing here imports torch (``tests/unit/models/test_onnx_backend.py`` checks this module's
imports), so serving without torch stays possible.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import ValidationError

from src.core.errors import CheckpointError, ConfigurationError
from src.core.labels import fake_column
from src.models.backends.base import BackendInfo, BatchScorer
from src.models.checkpoint import ModelMetadata
from src.models.transforms import normalization

logger = logging.getLogger(__name__)
NAME = "onnxruntime"
DEVICE = "cpu"
EXPORT_FORMAT = "dfd-onnx/1"
EXPORT_SUFFIX = ".onnx"
INT8_SUFFIX = ".int8.onnx"
EXPORT_COMMAND = "python -m src.export --checkpoint"
INT8_COMMAND_TAIL = "--int8 --calibration-dir DIR"
PRECISIONS = ("fp32", "int8")
INT8_NAME = "onnxruntime-int8"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# metadata_props keys written by src/export/onnx.py
FORMAT_KEY = "dfd.format"
METADATA_KEY = "dfd.metadata"
CHECKPOINT_SHA256_KEY = "dfd.checkpoint_sha256"
PARITY_KEY = "dfd.parity_max_abs_diff"
PARITY_CROPS_KEY = "dfd.parity_crops"
# written by src/export/quantize.py into model.int8.onnx
PRECISION_KEY = "dfd.precision"
OFFERED_KEY = "dfd.int8_offered"
ACCURACY_KEY = "dfd.int8_accuracy"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigurationError(f"unknown ONNX precision {precision!r}; known: fp32, int8")


def export_path(checkpoint: str | Path, precision: str = "fp32") -> Path:
    """Where the export of ``checkpoint`` lives: beside it, same stem, ``.onnx`` (fp32) or
    ``.int8.onnx`` (int8)."""
    _check_precision(precision)
    return Path(checkpoint).with_suffix(EXPORT_SUFFIX if precision == "fp32" else INT8_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportInfo:
    """What an export says about itself (its ``metadata_props``)."""

    metadata: ModelMetadata
    checkpoint_sha256: str
    parity_max_abs_diff: float | None = None
    parity_crops: int | None = None
    precision: str = "fp32"
    int8_offered: bool | None = None  # int8 only: whether its AUC drop passed the gate
    int8_accuracy: str | None = None  # int8 only: the measured figures, JSON


def parse_export_props(props: Mapping[str, str], source: str | Path) -> ExportInfo:
    """Validate an export's ``metadata_props``; :class:`CheckpointError` when they are not ours."""
    if props.get(FORMAT_KEY) != EXPORT_FORMAT:
        raise CheckpointError(f"{source} is not a {EXPORT_FORMAT} export (no {FORMAT_KEY} entry)")
    sha256 = props.get(CHECKPOINT_SHA256_KEY, "")
    if len(sha256) != 64:
        raise CheckpointError(f"{source} records no checkpoint SHA-256")
    try:
        metadata = ModelMetadata.model_validate_json(props.get(METADATA_KEY, ""))
    except ValidationError as exc:
        raise CheckpointError(f"invalid metadata in {source}: {exc}") from exc
    parity = props.get(PARITY_KEY)
    crops = props.get(PARITY_CROPS_KEY)
    offered = props.get(OFFERED_KEY)
    return ExportInfo(
        metadata=metadata,
        checkpoint_sha256=sha256,
        parity_max_abs_diff=float(parity) if parity is not None else None,
        parity_crops=int(crops) if crops is not None else None,
        precision=props.get(PRECISION_KEY, "fp32"),
        int8_offered=None if offered is None else offered == "true",
        int8_accuracy=props.get(ACCURACY_KEY),
    )


def read_export(data: bytes, source: str | Path) -> ExportInfo:
    """The :class:`ExportInfo` of an ONNX model's bytes."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read ONNX model {source}: {exc}") from exc
    props = {prop.key: prop.value for prop in model.metadata_props}
    return parse_export_props(props, source)


def check_export(checkpoint: str | Path, precision: str = "fp32") -> tuple[bytes, ExportInfo]:
    """The bytes and info of the export beside ``checkpoint``, refused unless it was exported
    from this very file (and, for int8, is an int8 export that was offered). Every refusal is a
    :class:`CheckpointError` naming the export command."""
    checkpoint = Path(checkpoint)
    path = export_path(checkpoint, precision)
    command = f"{EXPORT_COMMAND} {checkpoint}"
    if precision == "int8":
        command = f"{command} {INT8_COMMAND_TAIL}"
    if not path.is_file():
        raise CheckpointError(
            f"no ONNX {'int8 ' if precision == 'int8' else ''}export of {checkpoint} ({path} "
            f"not found): export it with "
            f"`{command}`"
        )
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    data = path.read_bytes()
    try:
        info = read_export(data, path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc.message}: re-export with `{command}`") from exc
    if info.checkpoint_sha256 != file_sha256(checkpoint):
        raise CheckpointError(
            f"{path} was exported from another checkpoint than {checkpoint} (the SHA-256 it "
            f"records differs): re-export with `{command}`"
        )
    if info.precision != precision:
        raise CheckpointError(
            f"{path} is a {info.precision} export, not {precision}: re-export with `{command}`"
        )
    if precision == "int8" and info.int8_offered is not True:
        raise CheckpointError(
            f"{path} is not offered: its ROC AUC dropped more than the gate allows against fp32 "
            f"({info.int8_accuracy or 'no figures recorded'}); serve fp32 (DFD_ONNX_PRECISION="
            "fp32) or quantise again with other calibration"
        )
    return data, info


@dataclass
class OnnxRuntimeBackend(BatchScorer):
    """An ONNX Runtime session on the CPU, with the metadata its export carries."""

    session: ort.InferenceSession
    metadata: ModelMetadata
    name: str = NAME
    _mean: np.ndarray = field(init=False, repr=False)
    _inv_std: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean, inv_std = normalization(self.metadata)
        self._mean = mean.reshape(1, 3, 1, 1)
        self._inv_std = inv_std.reshape(1, 3, 1, 1)

    # ------------------------------------------------------------------ Backend
    def describe(self) -> BackendInfo:
        return BackendInfo(backend=self.name, device=DEVICE, metadata=self.metadata)

    # ------------------------------------------------------------------ arrays
    def prepare_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 NxSxSx3 -> float32 Nx3xSxS, C-contiguous: the same numbers as the torch
        backend's ``normalize_batch`` (cast, subtract ``mean``, multiply by ``inv_std``)."""
        batch = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32, order="C")
        batch -= self._mean
        batch *= self._inv_std
        return batch

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities of the temperature-scaled logits, shape (N, num_labels),
        float32 (the temperature comes from the metadata the export records)."""
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        logits = np.asarray(logits, dtype=np.float32) / np.float32(self.temperature)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    def fake_probabilities(self, batch: np.ndarray) -> list[float]:
        probabilities: list[float] = fake_column(
            self.predict_proba(batch), self.metadata.labels
        ).tolist()
        return probabilities


def session_options(threads: int | None) -> ort.SessionOptions:
    """One model thread runs one pass at a time: ``threads`` intra-op threads, no inter-op
    parallelism, sequential execution, every graph optimisation.

    The intra-op threads do not spin between passes: in the service they share the cores with
    the preprocessing threads and the event loop, and a spinning pool takes the CPU those need
    (BENCHMARKS.md round 7: under load, spinning off doubled c=32 throughput and cut the CPU per
    answer from 25.6 to 14.8 ms; the face detector's sessions are set the same way)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (the cores)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def from_bytes(
    data: bytes, metadata: ModelMetadata, *, threads: int | None = None, source: str = "model"
) -> OnnxRuntimeBackend:
    """A backend over an exported graph held in memory (the exporter's parity check uses it)."""
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise CheckpointError(f"ONNX Runtime cannot load {source}: {exc}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    size = metadata.input_size
    if (
        [i.name for i in inputs] != [INPUT_NAME]
        or list(inputs[0].shape[1:]) != [3, size, size]
        or OUTPUT_NAME not in [o.name for o in outputs]
    ):
        raise CheckpointError(
            f"{source} does not take {INPUT_NAME}[N, 3, {size}, {size}] to {OUTPUT_NAME}: "
            "re-export it with python -m src.export"
        )
    return OnnxRuntimeBackend(session=session, metadata=metadata)


def load(
    path: str | Path,
    device: str = DEVICE,
    *,
    threads: int | None = None,
    precision: str = "fp32",
) -> OnnxRuntimeBackend:
    """Load the export beside the checkpoint at ``path`` (``model.pt`` -> ``model.onnx``, or
    ``model.int8.onnx`` for ``precision="int8"``).

    The export must record this checkpoint's SHA-256 (and an int8 one must be offered), else
    :class:`CheckpointError` (re-export with ``python -m src.export``). The metadata comes from
    the export itself. ONNX Runtime runs here on the CPU only; ``threads`` is its intra-op
    thread count.
    """
    _check_precision(precision)
    if str(device) != DEVICE:
        raise ConfigurationError(
            f"the {NAME} backend runs on the CPU, not {device}: set DFD_DEVICE=cpu, or "
            "DFD_BACKEND=torch (or auto) to serve on the GPU"
        )
    data, info = check_export(path, precision)
    onnx_path = export_path(path, precision)
    backend = from_bytes(data, info.metadata, threads=threads, source=str(onnx_path))
    backend.name = NAME if precision == "fp32" else INT8_NAME
    logger.info(
        "model loaded",
        extra={
            "backend": backend.name,
            "architecture": info.metadata.architecture,
            "version": info.metadata.version,
            "device": DEVICE,
            "export": str(onnx_path),
            "threads": threads,
        },
    )
    return backend


def load_int8(
    path: str | Path, device: str = DEVICE, *, threads: int | None = None
) -> OnnxRuntimeBackend:
    """:func:`load` of ``model.int8.onnx`` (the ``onnxruntime-int8`` backend)."""
    return load(path, device, threads=threads, precision="int8")


def metadata_json(metadata: ModelMetadata) -> str:
    """The metadata as the export stores it (compact JSON, every field)."""
    return json.dumps(metadata.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
