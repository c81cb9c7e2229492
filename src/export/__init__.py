"""Exports of a checkpoint for other runtimes (``python -m src.export``), each checked for parity.

``onnx.py``: the ONNX graph the ``onnxruntime`` backend serves, written beside the checkpoint with
its metadata and the checkpoint's SHA-256, refused when it does not answer as torch does.
"""

from src.export.onnx import PARITY_TOLERANCE, ParityError, export_onnx

__all__ = ["PARITY_TOLERANCE", "ParityError", "export_onnx"]
