"""One exception hierarchy. Each HTTP-facing error knows its status and machine-readable code."""

from __future__ import annotations


class DeepfakeServiceError(Exception):
    """Base class of every error this project raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message()
        self.headers = headers or {}
        super().__init__(self.message)

    @classmethod
    def default_message(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


# Start-up errors: they stop the service before it serves anything.
class ConfigurationError(DeepfakeServiceError):
    """The service is misconfigured."""

    code = "configuration_error"


class CheckpointError(DeepfakeServiceError):
    """The model checkpoint is missing, unreadable or inconsistent."""

    code = "checkpoint_error"


# Client errors.
class AuthenticationError(DeepfakeServiceError):
    """A valid X-API-Key header is required."""

    status_code = 401
    code = "unauthorized"


class BadRequestError(DeepfakeServiceError):
    """The request is malformed."""

    status_code = 400
    code = "bad_request"


class EmptyUploadError(BadRequestError):
    """The uploaded file is empty."""

    code = "empty_file"


class PayloadTooLargeError(DeepfakeServiceError):
    """The upload is larger than the configured limit."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(DeepfakeServiceError):
    """The upload is not an image in an allowed format."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidImageError(DeepfakeServiceError):
    """The image cannot be decoded."""

    status_code = 422
    code = "invalid_image"


class ImageDimensionsError(InvalidImageError):
    """The image's dimensions are outside the accepted range."""

    code = "invalid_dimensions"


class NoFaceDetectedError(InvalidImageError):
    """No face was found in the image, so it was not scored."""

    code = "no_face_detected"


# Server-side conditions a client can retry.
class ServiceUnavailableError(DeepfakeServiceError):
    """The service is not ready to take requests."""

    status_code = 503
    code = "not_ready"


class OverloadedError(ServiceUnavailableError):
    """The inference queue is full; retry later."""

    code = "overloaded"


class InferenceTimeoutError(DeepfakeServiceError):
    """The request waited longer than the inference timeout."""

    status_code = 504
    code = "timeout"


class InferenceError(DeepfakeServiceError):
    """The model failed on this input."""

    code = "inference_error"
