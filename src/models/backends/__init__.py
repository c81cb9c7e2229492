"""Model runtimes behind one ``Backend`` protocol, found by name (as timm finds models)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import NamedTuple

from src.core.errors import CheckpointError, ConfigurationError
from src.models.backends.base import Backend, BackendInfo, FrameScore

logger = logging.getLogger(__name__)

# name -> module with ``load(path, device, *, threads)``; imported only when chosen, so a
# runtime that is not used is never imported. torch first: the reference runtime.
BACKEND_MODULES = {
    "torch": "src.models.backends.torch",
    "onnxruntime": "src.models.backends.onnxruntime",
}
# Variants a choice can resolve to (not DFD_BACKEND values): name -> (module, loader).
BACKEND_VARIANTS = {"onnxruntime-int8": ("src.models.backends.onnxruntime", "load_int8")}
AUTO = "auto"


class BackendChoice(NamedTuple):
    """The backend to load and why it was chosen."""

    name: str
    reason: str


def choose_backend(
    requested: str, checkpoint: str | Path, device: str, precision: str = "fp32"
) -> BackendChoice:
    """Resolve ``DFD_BACKEND`` for a checkpoint on a resolved device (``cpu``, ``cuda:0``, ...).

    ``auto``: onnxruntime on the CPU when the export beside the checkpoint was made from it
    (``model.pt`` -> ``model.onnx``), else torch; torch on a GPU. An explicit ``onnxruntime``
    that cannot serve (a GPU device, no export, another checkpoint's export) is a
    :class:`ConfigurationError` naming the export command. The choice and its reason are logged.

    ``precision="int8"`` (``DFD_ONNX_PRECISION``) asks ONNX Runtime for ``model.int8.onnx``: on
    the CPU the int8 export must exist, match the checkpoint and be offered, else a
    :class:`ConfigurationError` (with ``auto`` too: int8 was asked for explicitly); ``auto`` on a
    GPU serves torch; ``torch`` with int8 is a contradiction and refused.
    """
    if requested != AUTO and requested not in BACKEND_MODULES:
        raise ConfigurationError(f"unknown backend {requested!r}; known: auto, {_known()}")
    if precision not in ("fp32", "int8"):
        raise ConfigurationError(f"unknown ONNX precision {precision!r}; known: fp32, int8")
    if precision == "int8":
        choice = _choose_int8(requested, Path(checkpoint), device)
    elif requested == AUTO or requested == "onnxruntime":
        choice = _choose_onnxruntime(requested, Path(checkpoint), device)
    else:
        choice = BackendChoice(requested, f"DFD_BACKEND={requested}")
    logger.info(
        "backend %s chosen (DFD_BACKEND=%s): %s",
        choice.name,
        requested,
        choice.reason,
        extra={"backend": choice.name, "requested": requested, "reason": choice.reason},
    )
    return choice


def _choose_onnxruntime(requested: str, checkpoint: Path, device: str) -> BackendChoice:
    explicit = requested == "onnxruntime"
    if device != "cpu":
        if explicit:
            raise ConfigurationError(
                f"DFD_BACKEND=onnxruntime serves on the CPU, but the device is {device}: set "
                "DFD_DEVICE=cpu, or DFD_BACKEND=auto (torch on the GPU)"
            )
        return BackendChoice("torch", f"device {device}: torch serves on the GPU")
    try:
        from src.models.backends.onnxruntime import check_export
    except ImportError as exc:  # onnx/onnxruntime not installed
        if explicit:
            raise ConfigurationError(f"DFD_BACKEND=onnxruntime, but {exc}") from exc
        return BackendChoice("torch", f"ONNX Runtime is not installed ({exc})")
    try:
        check_export(checkpoint)
    except CheckpointError as exc:
        if explicit:
            raise ConfigurationError(f"DFD_BACKEND=onnxruntime, but {exc.message}") from exc
        return BackendChoice("torch", f"on the CPU, but {exc.message}")
    reason = f"on the CPU, and {checkpoint.with_suffix('.onnx')} was exported from {checkpoint}"
    if explicit:
        reason = f"DFD_BACKEND=onnxruntime; {reason}"
    return BackendChoice("onnxruntime", reason)


def _choose_int8(requested: str, checkpoint: Path, device: str) -> BackendChoice:
    if requested == "torch":
        raise ConfigurationError(
            "DFD_ONNX_PRECISION=int8 applies to ONNX Runtime, but DFD_BACKEND=torch: set "
            "DFD_BACKEND=onnxruntime (or auto), or DFD_ONNX_PRECISION=fp32"
        )
    if device != "cpu":
        if requested == "onnxruntime":
            raise ConfigurationError(
                f"DFD_BACKEND=onnxruntime serves on the CPU, but the device is {device}: set "
                "DFD_DEVICE=cpu, or DFD_BACKEND=auto (torch on the GPU)"
            )
        return BackendChoice("torch", f"device {device}: torch serves on the GPU (int8 unused)")
    try:
        from src.models.backends.onnxruntime import check_export
    except ImportError as exc:  # onnx/onnxruntime not installed
        raise ConfigurationError(f"DFD_ONNX_PRECISION=int8, but {exc}") from exc
    try:
        check_export(checkpoint, "int8")
    except CheckpointError as exc:
        raise ConfigurationError(f"DFD_ONNX_PRECISION=int8, but {exc.message}") from exc
    return BackendChoice(
        "onnxruntime-int8",
        f"DFD_BACKEND={requested}, DFD_ONNX_PRECISION=int8; on the CPU, and "
        f"{checkpoint.with_suffix('.int8.onnx')} was quantised from {checkpoint} and offered",
    )


def load_backend(
    name: str, path: str | Path, *, device: str = "cpu", threads: int | None = None
) -> Backend:
    """Load the checkpoint at ``path`` with the backend called ``name``."""
    if name in BACKEND_VARIANTS:
        module_name, attribute = BACKEND_VARIANTS[name]
    elif name in BACKEND_MODULES:
        module_name, attribute = BACKEND_MODULES[name], "load"
    else:
        raise ConfigurationError(f"unknown backend {name!r}; known: {_known()}")
    loader: Callable[..., Backend] = getattr(import_module(module_name), attribute)
    return loader(path, device, threads=threads)


def _known() -> str:
    return ", ".join(BACKEND_MODULES)


__all__ = [
    "BACKEND_MODULES",
    "BACKEND_VARIANTS",
    "Backend",
    "BackendChoice",
    "BackendInfo",
    "FrameScore",
    "choose_backend",
    "load_backend",
]
