"""Engine errors carry no HTTP; the service maps each to its status and headers."""

from __future__ import annotations

import inspect

import pytest

from src.core import errors
from src.serve.errors import CLIENT_CLOSED_REQUEST, http_headers, http_status


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.AuthenticationError(), 401),
        (errors.BadRequestError(), 400),
        (errors.EmptyUploadError(), 400),
        (errors.PayloadTooLargeError(), 413),
        (errors.TooMuchWorkError(), 413),
        (errors.UnsupportedMediaTypeError(), 415),
        (errors.InvalidImageError(), 422),
        (errors.NoFaceDetectedError(), 422),
        (errors.ClientDisconnectedError(), CLIENT_CLOSED_REQUEST),
        (errors.ServiceUnavailableError(), 503),
        (errors.OverloadedError(retry_after_s=1), 503),
        (errors.InferenceTimeoutError(), 504),
        (errors.InferenceError(), 500),
        (errors.CheckpointError(), 500),
    ],
)
def test_each_error_has_one_status(error: errors.DeepfakeError, status: int) -> None:
    assert http_status(error) == status


def test_retry_after_comes_from_the_error_s_data() -> None:
    assert http_headers(errors.OverloadedError(retry_after_s=2.2)) == {"Retry-After": "3"}
    assert http_headers(errors.OverloadedError()) == {}
    assert http_headers(errors.InvalidImageError()) == {}


def test_errors_know_nothing_of_http() -> None:
    source = inspect.getsource(errors).replace("Nothing here knows HTTP", "")
    for word in ("status_code", "headers=", "Retry-After", "HTTP", "fastapi", "starlette"):
        assert word not in source
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    assert all(
        issubclass(c, errors.DeepfakeError) for c in classes if c.__module__ == errors.__name__
    )
    assert errors.ClientDisconnectedError in classes
