"""The ONNX Runtime backend: the checkpoint's exported graph (``python -m src.export``) on the CPU.

The export lives beside its checkpoint with the same stem (``model.pt`` -> ``model.onnx``) and
records, in the ONNX model's ``metadata_props``, the checkpoint's metadata and the SHA-256 of the
checkpoint file. :func:`load` takes the *checkpoint* path, as every backend does, and refuses an
export whose recorded hash is not the checkpoint's (it was exported from other weights).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import ValidationError

from src.core.errors import CheckpointError, ConfigurationError
from src.core.labels import fake_column
from src.models.backends.base import BackendInfo, FrameScore
from src.models.checkpoint import ModelMetadata
from src.models.transforms import normalization

logger = logging.getLogger(__name__)
NAME = "onnxruntime"
DEVICE = "cpu"
EXPORT_FORMAT = "dfd-onnx/1"
EXPORT_SUFFIX = ".onnx"
EXPORT_COMMAND = "python -m src.export --checkpoint"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# metadata_props keys written by src/export/onnx.py
FORMAT_KEY = "dfd.format"
METADATA_KEY = "dfd.metadata"
CHECKPOINT_SHA256_KEY = "dfd.checkpoint_sha256"
PARITY_KEY = "dfd.parity_max_abs_diff"
PARITY_CROPS_KEY = "dfd.parity_crops"


def export_path(checkpoint: str | Path) -> Path:
    """Where the export of ``checkpoint`` lives: beside it, same stem, ``.onnx``."""
    return Path(checkpoint).with_suffix(EXPORT_SUFFIX)


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
    return ExportInfo(
        metadata=metadata,
        checkpoint_sha256=sha256,
        parity_max_abs_diff=float(parity) if parity is not None else None,
        parity_crops=int(crops) if crops is not None else None,
    )


def read_export(data: bytes, source: str | Path) -> ExportInfo:
    """The :class:`ExportInfo` of an ONNX model's bytes."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read ONNX model {source}: {exc}") from exc
    props = {prop.key: prop.value for prop in model.metadata_props}
    return parse_export_props(props, source)


def check_export(checkpoint: str | Path) -> tuple[bytes, ExportInfo]:
    """The bytes and info of the export beside ``checkpoint``, refused unless it was exported
    from this very file. Every refusal is a :class:`CheckpointError` naming the export command."""
    checkpoint = Path(checkpoint)
    path = export_path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"no ONNX export of {checkpoint} ({path} not found): export it with "
            f"`{EXPORT_COMMAND} {checkpoint}`"
        )
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    data = path.read_bytes()
    try:
        info = read_export(data, path)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc.message}: re-export with `{EXPORT_COMMAND} {checkpoint}`"
        ) from exc
    if info.checkpoint_sha256 != file_sha256(checkpoint):
        raise CheckpointError(
            f"{path} was exported from another checkpoint than {checkpoint} (the SHA-256 it "
            f"records differs): re-export with `{EXPORT_COMMAND} {checkpoint}`"
        )
    return data, info


@dataclass
class OnnxRuntimeBackend:
    """An ONNX Runtime session on the CPU, with the metadata its export carries."""

    session: ort.InferenceSession
    metadata: ModelMetadata
    _mean: np.ndarray = field(init=False, repr=False)
    _inv_std: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean, inv_std = normalization(self.metadata)
        self._mean = mean.reshape(1, 3, 1, 1)
        self._inv_std = inv_std.reshape(1, 3, 1, 1)

    # ------------------------------------------------------------------ Backend
    def describe(self) -> BackendInfo:
        return BackendInfo(backend=NAME, device=DEVICE, metadata=self.metadata)

    def warm_up(self, batch_sizes: Iterable[int]) -> None:
        size = self.metadata.input_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        for batch in sorted(set(batch_sizes)):
            self.score([blank] * batch)

    def score(self, crops: Sequence[np.ndarray]) -> list[FrameScore]:
        probabilities = self.fake_probabilities(self.prepare_batch(crops))
        if len(probabilities) != len(crops):
            raise RuntimeError(f"model returned {len(probabilities)} outputs for {len(crops)}")
        return [FrameScore(fake_prob=p) for p in probabilities]

    # ------------------------------------------------------------------ arrays
    def prepare_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 NxSxSx3 -> float32 Nx3xSxS, C-contiguous: the same numbers as the torch
        backend's ``normalize_batch`` (cast, subtract ``mean``, multiply by ``inv_std``)."""
        batch = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32, order="C")
        batch -= self._mean
        batch *= self._inv_std
        return batch

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, shape (N, num_labels), float32."""
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        logits = np.asarray(logits, dtype=np.float32)
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
    parallelism, sequential execution, every graph optimisation."""
    options = ort.SessionOptions()
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
    path: str | Path, device: str = DEVICE, *, threads: int | None = None
) -> OnnxRuntimeBackend:
    """Load the export beside the checkpoint at ``path`` (``model.pt`` -> ``model.onnx``).

    The export must record this checkpoint's SHA-256, else :class:`CheckpointError` (re-export
    with ``python -m src.export``). The metadata comes from the export itself. ONNX Runtime runs
    here on the CPU only; ``threads`` is its intra-op thread count.
    """
    if str(device) != DEVICE:
        raise ConfigurationError(
            f"the {NAME} backend runs on the CPU, not {device}: set DFD_DEVICE=cpu, or "
            "DFD_BACKEND=torch (or auto) to serve on the GPU"
        )
    data, info = check_export(path)
    onnx_path = export_path(path)
    backend = from_bytes(data, info.metadata, threads=threads, source=str(onnx_path))
    logger.info(
        "model loaded",
        extra={
            "backend": NAME,
            "architecture": info.metadata.architecture,
            "version": info.metadata.version,
            "device": DEVICE,
            "export": str(onnx_path),
            "threads": threads,
        },
    )
    return backend


def metadata_json(metadata: ModelMetadata) -> str:
    """The metadata as the export stores it (compact JSON, every field)."""
    return json.dumps(metadata.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
