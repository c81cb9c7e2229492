"""The Open Inference Protocol's parsing and encoding (``src/serve/oip.py``), without a server:
JSON and binary tensors in, both out, and every malformed request refused with a reason."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from src.core.errors import BadRequestError, PayloadTooLargeError, TooMuchWorkError
from src.serve import oip


def _bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _binary_request(items: list[bytes], **document: object) -> tuple[bytes, str]:
    raw = _bytes_tensor(*items)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(items)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **document,
        }
    ).encode()
    return header + raw, str(len(header))


def _binary_header(size: int, count: int = 1) -> bytes:
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [count],
        "parameters": {"binary_data_size": size},
    }
    return json.dumps({"inputs": [tensor]}).encode()


def _parse(body: bytes, header_length: str | None = None, **limits: int) -> oip.InferRequest:
    return oip.parse_infer_request(
        body,
        header_length,
        max_items=limits.get("max_items", 8),
        max_item_bytes=limits.get("max_item_bytes", 1024),
    )


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _image(data: list[object], shape: object = None, **extra: object) -> dict[str, object]:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(data)] if shape is None else shape,
        "data": data,
        **extra,
    }


def test_binary_images_parse_in_order_with_every_output_in_json_by_default() -> None:
    body, length = _binary_request([b"\xff\xd8one", b"\x89PNGtwo", b"\x00three"], id="req-7")
    parsed = _parse(body, length)
    assert parsed.images == [b"\xff\xd8one", b"\x89PNGtwo", b"\x00three"]
    assert parsed.id == "req-7"
    assert parsed.outputs == {"fake_prob": False, "label": False}


def test_requested_outputs_keep_their_order_and_binary_flags() -> None:
    body, length = _binary_request(
        [b"x"],
        outputs=[
            {"name": "label", "parameters": {"binary_data": True}},
            {"name": "fake_prob"},
        ],
        parameters={"binary_data_output": False},
    )
    assert list(_parse(body, length).outputs.items()) == [("label", True), ("fake_prob", False)]
    body, length = _binary_request([b"x"], parameters={"binary_data_output": True})
    assert _parse(body, length).outputs == {"fake_prob": True, "label": True}


def test_json_strings_are_utf8_bytes_and_base64_when_declared() -> None:
    assert _parse(_json({"inputs": [_image(["héllo"])]})).images == ["héllo".encode()]
    encoded = [base64.b64encode(b"\xff\xd8\x00jpeg").decode(), base64.b64encode(b"\x01").decode()]
    document = {"inputs": [_image(encoded, parameters={"content_type": "base64"})]}
    assert _parse(_json(document)).images == [b"\xff\xd8\x00jpeg", b"\x01"]
    nested = {"inputs": [_image([["a", "b"]], shape=[2])]}  # row-major nesting of a 1-D tensor
    assert _parse(_json(nested)).images == [b"a", b"b"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], "JSON object"),
        ({}, "'inputs' must be a list"),
        ({"inputs": [_image(["a"]) | {"name": "picture"}]}, "unexpected inputs ['picture']"),
        ({"inputs": [_image(["a"]), _image(["b"])]}, "more than once"),
        ({"inputs": [_image(["a"]) | {"datatype": "FP32"}]}, "datatype 'FP32'"),
        ({"inputs": [_image(["a"], shape=[1, 1])]}, "shape [n]"),
        ({"inputs": [_image(["a"], shape=[0])]}, "shape [n]"),
        ({"inputs": [_image(["a"], shape=["1"])]}, "shape [n]"),
        ({"inputs": [_image(["a", "b"], shape=[3])]}, "shape [3] but 2 elements"),
        ({"inputs": [_image([1])]}, "list of strings"),
        ({"inputs": [_image(["a"], parameters={"content_type": "hex"})]}, "'hex'"),
        ({"inputs": [_image(["!!"], parameters={"content_type": "base64"})]}, "not base64"),
        ({"inputs": [_image([""])]}, "element 0 is empty"),
        ({"inputs": [_image(["a"])], "outputs": [{"name": "logits"}]}, "unknown output"),
        ({"inputs": [_image(["a"])], "outputs": {"name": "label"}}, "'outputs' must be a list"),
        ({"inputs": [_image(["a"])], "id": 7}, "'id' must be a string"),
        ({"inputs": [_image(["a"])], "parameters": {"binary_data_output": 1}}, "true or false"),
    ],
)
def test_malformed_json_requests_are_refused_with_a_reason(document: object, message: str) -> None:
    with pytest.raises(BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _parse(_json(document))


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(BadRequestError, match="malformed"):
        _parse(b"{not json")


@pytest.mark.parametrize("length", ["-1", "abc", "100000", ""])
def test_a_header_length_outside_the_body_is_refused(length: str) -> None:
    body, _ = _binary_request([b"x"])
    with pytest.raises(BadRequestError, match="Inference-Header-Content-Length"):
        _parse(body, length)


def test_binary_length_mismatches_are_refused() -> None:
    body, length = _binary_request([b"abc", b"de"])
    with pytest.raises(BadRequestError, match="binary_data_size"):
        _parse(body + b"extra", length)  # more binary bytes than declared
    with pytest.raises(BadRequestError, match="binary_data_size"):
        _parse(body[:-1], length)  # fewer
    raw = struct.pack("<I", 50) + b"012345"  # the element claims 50 bytes; 6 follow
    header = _binary_header(len(raw))
    with pytest.raises(BadRequestError, match="declares 50 bytes"):
        _parse(header + raw, str(len(header)))
    raw = _bytes_tensor(b"ab") + b"\x01\x00"  # half a length after the first element
    header = _binary_header(len(raw))
    with pytest.raises(BadRequestError, match="inside an element's length"):
        _parse(header + raw, str(len(header)))
    with pytest.raises(BadRequestError, match="no input declares"):
        header = _json({"inputs": [_image(["a"])]})
        _parse(header + b"stray", str(len(header)))


def test_binary_and_json_data_together_are_refused() -> None:
    header = _json({"inputs": [_image(["a"]) | {"parameters": {"binary_data_size": 5}}]})
    with pytest.raises(BadRequestError, match="both"):
        _parse(header + _bytes_tensor(b"a"), str(len(header)))


def test_too_many_or_too_large_images_are_the_usual_413s() -> None:
    body, length = _binary_request([b"a"] * 3)
    with pytest.raises(TooMuchWorkError, match="at most 2 images"):
        _parse(body, length, max_items=2)
    body, length = _binary_request([b"small", b"x" * 33])
    with pytest.raises(PayloadTooLargeError, match="element 1 exceeds the 32-byte limit"):
        _parse(body, length, max_item_bytes=32)


def test_a_json_answer_holds_the_data_and_no_header_length() -> None:
    body, length = oip.encode_infer_response(
        model_name="m",
        model_version="1",
        request_id="abc",
        fake_probs=[0.25, 0.875],
        labels=["real", "fake"],
        outputs={"fake_prob": False, "label": False},
    )
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "abc",
        "outputs": [
            {"name": "fake_prob", "datatype": "FP32", "shape": [2], "data": [0.25, 0.875]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["real", "fake"]},
        ],
    }


def test_a_binary_answer_puts_each_binary_output_after_the_header_in_order() -> None:
    body, length = oip.encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        fake_probs=[0.5, 0.125],
        labels=["fake", "real"],
        outputs={"label": True, "fake_prob": True},
    )
    assert length is not None
    header = json.loads(body[:length])
    assert "id" not in header
    sizes = [tensor["parameters"]["binary_data_size"] for tensor in header["outputs"]]
    assert [tensor["name"] for tensor in header["outputs"]] == ["label", "fake_prob"]
    raw = body[length:]
    assert len(raw) == sum(sizes)
    assert raw[: sizes[0]] == _bytes_tensor(b"fake", b"real")
    assert np.frombuffer(raw[sizes[0] :], dtype="<f4").tolist() == [0.5, 0.125]
    assert all("data" not in tensor for tensor in header["outputs"])


def test_metadata_lists_the_one_input_and_two_outputs() -> None:
    assert oip.tensor_metadata() == {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "fake_prob", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }
