"""The Open Inference Protocol (v2, the KServe / Triton REST protocol): parsing its requests and
encoding its answers, with no HTTP framework and no engine.

The model takes one input, ``image`` (``BYTES``, shape ``[-1]``: encoded image files), and gives
two outputs, ``fake_prob`` (``FP32``, ``[-1]``) and ``label`` (``BYTES``, ``[-1]``). Tensors come
as JSON or through the binary tensor data extension: a JSON header of
``Inference-Header-Content-Length`` bytes, then each binary tensor's bytes in input order, a
``BYTES`` element as a 4-byte little-endian length and its bytes. JSON ``BYTES`` elements are
strings (their UTF-8 bytes, as in Triton), or base64 when the input's
``parameters.content_type`` is ``"base64"`` (the KServe codec), which is how a JSON-only client
sends an image.

Every malformed request is a :class:`BadRequestError` (400); too many images or too large an
image are the service's usual 413s.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.core.errors import BadRequestError, PayloadTooLargeError, TooMuchWorkError

IMAGE_INPUT = "image"
FAKE_PROB_OUTPUT = "fake_prob"
LABEL_OUTPUT = "label"
OUTPUT_DATATYPES: dict[str, str] = {FAKE_PROB_OUTPUT: "FP32", LABEL_OUTPUT: "BYTES"}
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: its id, the images, and each output wanted (name: in
    binary), in the order to answer them."""

    id: str | None
    images: list[bytes]
    outputs: dict[str, bool]


def tensor_metadata() -> dict[str, list[dict[str, Any]]]:
    """The model's inputs and outputs, as ``GET /v2/models/{model}`` lists them."""
    return {
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [-1]}
            for name, datatype in OUTPUT_DATATYPES.items()
        ],
    }


def parse_infer_request(
    body: bytes, header_length: str | None, *, max_items: int, max_item_bytes: int
) -> InferRequest:
    """The request in ``body`` (``header_length``: the ``Inference-Header-Content-Length``
    header, None when the whole body is JSON)."""
    header, binary = _split(body, header_length)
    document = _json_object(header)
    tensor = _image_input(document.get("inputs"))
    count = _count(tensor.get("shape"))
    if count > max_items:
        raise TooMuchWorkError(f"a request takes at most {max_items} images (DFD_MAX_BATCH_ITEMS)")
    images = _tensor_elements(tensor, binary)
    if len(images) != count:
        raise BadRequestError(
            f"input '{IMAGE_INPUT}' has shape [{count}] but {len(images)} elements"
        )
    for index, image in enumerate(images):
        if not image:
            raise BadRequestError(f"input '{IMAGE_INPUT}' element {index} is empty")
        if len(image) > max_item_bytes:
            raise PayloadTooLargeError(
                f"input '{IMAGE_INPUT}' element {index} exceeds the {max_item_bytes}-byte limit"
            )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    return InferRequest(request_id, images, _outputs(document))


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    fake_probs: Sequence[float],
    labels: Sequence[str],
    outputs: dict[str, bool],
) -> tuple[bytes, int | None]:
    """The answer's body, and its JSON header's length when any output is binary (the value of
    ``Inference-Header-Content-Length``; None for an all-JSON answer)."""
    probs = np.asarray(fake_probs, dtype="<f4")
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in outputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": OUTPUT_DATATYPES[name],
            "shape": [len(probs)],
        }
        if name == FAKE_PROB_OUTPUT:
            raw = probs.tobytes()
            values: list[Any] = [round(float(p), 6) for p in probs]
        else:
            raw = b"".join(_LENGTH.pack(len(x.encode())) + x.encode() for x in labels)
            values = list(labels)
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = tensors
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise BadRequestError(
            f"{HEADER_LENGTH} must be a whole number of bytes at most the body's {len(body)}"
        )
    return body[: int(text)], body[int(text) :]


def _json_object(header: bytes) -> dict[str, Any]:
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request's JSON is malformed: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequestError("the request must be a JSON object")
    return document


def _image_input(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError(f"'inputs' must be a list holding the input '{IMAGE_INPUT}'")
    names = [tensor.get("name") if isinstance(tensor, dict) else None for tensor in inputs]
    unknown = [name for name in names if name != IMAGE_INPUT]
    if unknown:
        raise BadRequestError(f"unexpected inputs {unknown}; the model takes '{IMAGE_INPUT}'")
    if len(inputs) > 1:
        raise BadRequestError(f"input '{IMAGE_INPUT}' is given more than once")
    tensor: dict[str, Any] = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequestError(
            f"input '{IMAGE_INPUT}' has datatype {tensor.get('datatype')!r}; expected BYTES"
        )
    return tensor


def _count(shape: Any) -> int:
    if (
        not isinstance(shape, list)
        or len(shape) != 1
        or not isinstance(shape[0], int)
        or isinstance(shape[0], bool)
        or shape[0] < 1
    ):
        raise BadRequestError(
            f"input '{IMAGE_INPUT}' must have shape [n] with n >= 1 images, not {shape!r}"
        )
    return shape[0]


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequestError(f"{what}'s 'parameters' must be an object")
    return parameters


def _tensor_elements(tensor: dict[str, Any], binary: bytes) -> list[bytes]:
    parameters = _parameters(tensor, f"input '{IMAGE_INPUT}'")
    size = parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise BadRequestError(
                f"the body has {len(binary)} binary bytes but no input declares binary_data_size"
            )
        return _json_elements(tensor.get("data"), parameters.get("content_type"))
    if "data" in tensor:
        raise BadRequestError(f"input '{IMAGE_INPUT}' has both 'data' and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise BadRequestError(
            f"input '{IMAGE_INPUT}' declares binary_data_size {size!r} but the body holds "
            f"{len(binary)} binary bytes"
        )
    return _binary_elements(binary)


def _binary_elements(raw: bytes) -> list[bytes]:
    """BYTES elements serialised as a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BadRequestError("binary BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BadRequestError(
                f"binary BYTES element {len(elements)} declares {length} bytes; "
                f"{len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _json_elements(data: Any, content_type: Any) -> list[bytes]:
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # row-major nesting of a 1-D tensor
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise BadRequestError(
            f"input '{IMAGE_INPUT}' needs 'data' as a list of strings, or binary data"
        )
    if content_type is None:
        return [item.encode() for item in data]
    if content_type != "base64":
        raise BadRequestError(f"content_type {content_type!r} is not supported; use 'base64'")
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except (binascii.Error, ValueError):
        raise BadRequestError(f"input '{IMAGE_INPUT}' holds data that is not base64") from None


def _outputs(document: dict[str, Any]) -> dict[str, bool]:
    """Each output to answer and whether in binary: those asked for, else all of them in
    binary only when ``parameters.binary_data_output`` is true."""
    binary_default = _parameters(document, "the request").get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequestError("parameters.binary_data_output must be true or false")
    requested = document.get("outputs")
    if requested is None:
        return dict.fromkeys(OUTPUT_DATATYPES, binary_default)
    if not isinstance(requested, list):
        raise BadRequestError("'outputs' must be a list")
    outputs: dict[str, bool] = {}
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_DATATYPES:
            raise BadRequestError(
                f"unknown output {name!r}; the model gives {sorted(OUTPUT_DATATYPES)}"
            )
        binary = _parameters(item, f"output '{name}'").get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequestError(f"output '{name}': binary_data must be true or false")
        outputs[name] = binary
    return outputs or dict.fromkeys(OUTPUT_DATATYPES, binary_default)
