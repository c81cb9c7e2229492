"""The Open Inference Protocol spoken by the real ``tritonclient[http]`` package to a real server
process with the committed demo model: probes, metadata, inference with binary data on and off
(several images per request), and the protocol's errors as the client raises them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from src.core.settings import DEFAULT_CHECKPOINT
from src.models import read_checkpoint
from tests.helpers import REPO_ROOT
from tests.helpers.api import TEST_KEY
from tests.helpers.server import served

pytestmark = pytest.mark.slow
MODEL = "deepfake-detector"
EXAMPLES = ("real_0", "fake_0", "real_1", "fake_1")


@pytest.fixture(scope="module")
def client() -> Iterator[httpclient.InferenceServerClient]:
    with (
        served(REPO_ROOT / DEFAULT_CHECKPOINT, DFD_MAX_BATCH_ITEMS="4") as (_, port, _),
        httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=2) as triton,
    ):
        yield triton


def _images(*names: str) -> httpclient.InferInput:
    data = np.array(
        [(REPO_ROOT / "examples" / f"{name}.jpg").read_bytes() for name in names], dtype=np.object_
    )
    tensor = httpclient.InferInput("image", [len(names)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=True)
    return tensor


def auth() -> dict[str, str]:
    """The key header, a new dict each call: tritonclient writes its
    ``Inference-Header-Content-Length`` into the dict it is given."""
    return {"X-API-Key": TEST_KEY}


def _version() -> str:
    return read_checkpoint(REPO_ROOT / DEFAULT_CHECKPOINT).metadata.version


def test_probes_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=auth())
    assert client.is_model_ready(MODEL, _version(), headers=auth())
    assert not client.is_model_ready("another-model", headers=auth())
    server = client.get_server_metadata(headers=auth())
    assert "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata(MODEL, headers=auth())
    assert model["versions"] == [_version()]
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {(o["name"], o["datatype"]) for o in model["outputs"]} == {
        ("fake_prob", "FP32"),
        ("label", "BYTES"),
    }


@pytest.mark.parametrize("binary", [True, False])
def test_infer_tells_the_examples_apart_with_binary_outputs_on_and_off(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    outputs = [
        httpclient.InferRequestedOutput("fake_prob", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer(
        MODEL, [_images(*EXAMPLES)], outputs=outputs, request_id="tc-1", headers=auth()
    )
    probs = result.as_numpy("fake_prob")
    labels = result.as_numpy("label")
    assert probs is not None and labels is not None
    assert probs.dtype == np.float32 and probs.shape == (4,)
    assert [label.decode() if isinstance(label, bytes) else label for label in labels] == [
        name.split("_")[0] for name in EXAMPLES
    ]
    response = result.get_response()
    assert response["id"] == "tc-1" and response["model_version"] == _version()
    assert all(("parameters" in o) == binary for o in response["outputs"])


def test_infer_without_requested_outputs_and_by_version(
    client: httpclient.InferenceServerClient,
) -> None:
    """No outputs named: tritonclient asks for all of them in binary."""
    both = client.infer(MODEL, [_images("fake_0", "real_0")], headers=auth())
    one = client.infer(MODEL, [_images("real_0")], model_version=_version(), headers=auth())
    both_probs, one_probs = both.as_numpy("fake_prob"), one.as_numpy("fake_prob")
    assert both_probs is not None and one_probs is not None
    assert both_probs[1] == pytest.approx(one_probs[0], abs=1e-5)
    assert both_probs[0] > both_probs[1]
    compressed = client.infer(
        MODEL, [_images("real_0")], headers=auth(), request_compression_algorithm="gzip"
    )
    compressed_probs = compressed.as_numpy("fake_prob")
    assert compressed_probs is not None
    assert compressed_probs[0] == pytest.approx(one_probs[0], abs=1e-5)


def test_errors_reach_the_client_with_the_protocols_status(
    client: httpclient.InferenceServerClient,
) -> None:
    def refused(status: str, **kwargs: object) -> str:
        with pytest.raises(InferenceServerException) as caught:
            kwargs.setdefault("headers", auth())
            client.infer(**kwargs)  # type: ignore[arg-type]
        assert caught.value.status() == status, caught.value
        return str(caught.value.message())

    assert "X-API-Key" in refused("401", model_name=MODEL, inputs=[_images("real_0")], headers={})
    assert "unknown model" in refused("404", model_name="nope", inputs=[_images("real_0")])
    assert "no version" in refused(
        "404", model_name=MODEL, inputs=[_images("real_0")], model_version="0.0.0-none"
    )
    text = httpclient.InferInput("image", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hello"], dtype=np.object_), binary_data=False)
    assert "element 0" in refused("400", model_name=MODEL, inputs=[text])
    numbers = httpclient.InferInput("image", [2], "FP32")
    numbers.set_data_from_numpy(np.zeros(2, dtype=np.float32))
    assert "datatype 'FP32'" in refused("400", model_name=MODEL, inputs=[numbers])
    assert "at most 4 images" in refused("413", model_name=MODEL, inputs=[_images(*EXAMPLES * 2)])
