"""One exception hierarchy. Each error says what happened, with a machine-readable ``code``.

Nothing here knows HTTP: the service maps errors to statuses and headers
(``src/serve/errors.py``); training and the command-line tools print them.
"""

from __future__ import annotations


class DeepfakeError(Exception):
    """Base class of every error this project raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message()
        super().__init__(self.message)

    @classmethod
    def default_message(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


# Set-up errors: a run or a service stops before it starts.
class ConfigurationError(DeepfakeError):
    """The service is misconfigured."""

    code = "configuration_error"


class CheckpointError(DeepfakeError):
    """The model checkpoint is missing, unreadable or inconsistent."""

    code = "checkpoint_error"


class DatasetError(DeepfakeError, ValueError):
    """The training data is missing or malformed."""

    code = "dataset_error"


# The caller is at fault.
class AuthenticationError(DeepfakeError):
    """A valid X-API-Key header is required."""

    code = "unauthorized"


class ForbiddenError(DeepfakeError):
    """This API key may not do that (the route needs a scope the key does not have)."""

    code = "forbidden"


class InputError(DeepfakeError):
    """The input cannot be used; sending it again will not help."""

    code = "bad_request"


class BadRequestError(InputError):
    """The request is malformed."""

    code = "bad_request"


class EmptyUploadError(BadRequestError):
    """The uploaded file is empty."""

    code = "empty_file"


class PayloadTooLargeError(InputError):
    """The upload is larger than the configured limit."""

    code = "payload_too_large"


class TooMuchWorkError(InputError):
    """The request holds more images than the service admits at once."""

    code = "too_much_work"


class UnsupportedMediaTypeError(InputError):
    """The upload is not an image in an allowed format."""

    code = "unsupported_media_type"


class InvalidImageError(InputError):
    """The image cannot be decoded."""

    code = "invalid_image"


class ImageDimensionsError(InvalidImageError):
    """The image's dimensions are outside the accepted range."""

    code = "invalid_dimensions"


class NoFaceDetectedError(InvalidImageError):
    """No face was found in the image, so it was not scored."""

    code = "no_face_detected"


class InvalidVideoError(InputError):
    """The video cannot be decoded."""

    code = "invalid_video"


class VideoLimitError(InvalidVideoError):
    """The video is past one of the configured limits."""

    code = "video_limit_exceeded"


class NotFoundError(DeepfakeError):
    """No such resource, or not one this API key may see."""

    code = "not_found"


class ConflictError(DeepfakeError):
    """The request conflicts with the current state (a version already loading, the last one)."""

    code = "conflict"


class ModelLoadError(DeepfakeError):
    """A model version could not be loaded; the versions already serving are untouched."""

    code = "model_load_failed"


class InvalidParameterError(InputError):
    """A query parameter or body field is malformed (a cursor, a filter)."""

    code = "validation_error"


class UploadTimeoutError(InputError):
    """The upload did not arrive within the body-read deadline."""

    code = "request_timeout"


class ClientDisconnectedError(DeepfakeError):
    """The client went away before its answer was ready."""

    code = "client_closed_request"


# Conditions a caller can retry.
class ServiceUnavailableError(DeepfakeError):
    """The service is not ready to take requests."""

    code = "not_ready"

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(DeepfakeError):
    """Too many requests for this key or client; retry later."""

    code = "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailableError(ServiceUnavailableError):
    """The result store cannot be reached (or is off); inference still works."""

    code = "store_unavailable"


class RateLimitStoreUnavailableError(ServiceUnavailableError):
    """The rate-limit store is unreachable and the service fails closed; retry later."""

    code = "rate_limit_unavailable"


class OverloadedError(ServiceUnavailableError):
    """The service is full; retry later."""

    code = "overloaded"


class InferenceTimeoutError(DeepfakeError):
    """The request waited longer than the inference timeout."""

    code = "timeout"


class InferenceError(DeepfakeError):
    """The model failed on this input."""

    code = "inference_error"
