"""Errors to HTTP: each engine error's status and headers, and the handlers that answer every
failure with the one JSON error shape and the request id.

The mapping lives here, not on the errors, so the engine stays free of HTTP.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from src.core import errors
from src.core.context import current_request_id
from src.serve.schemas import error_body

logger = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499

# The most specific class in an error's MRO decides its status.
HTTP_STATUS: dict[type[errors.DeepfakeError], int] = {
    errors.DeepfakeError: 500,
    errors.AuthenticationError: 401,
    errors.ForbiddenError: 403,
    errors.RateLimitedError: 429,
    errors.InputError: 400,
    errors.PayloadTooLargeError: 413,
    errors.TooMuchWorkError: 413,
    errors.UploadTimeoutError: 408,
    errors.UnsupportedMediaTypeError: 415,
    errors.InvalidImageError: 422,
    errors.InvalidVideoError: 422,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.ModelLoadError: 422,
    errors.InvalidParameterError: 422,
    errors.ClientDisconnectedError: CLIENT_CLOSED_REQUEST,
    errors.ServiceUnavailableError: 503,
    errors.InferenceTimeoutError: 504,
}
EXPECTED_SERVER_STATUSES = frozenset({503, 504})


def http_status(exc: errors.DeepfakeError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def http_headers(exc: errors.DeepfakeError) -> dict[str, str]:
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(retry_after)))}


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, current_request_id()), status_code=status, headers=headers
    )


async def handle_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.DeepfakeError)
    status = http_status(exc)
    if status == CLIENT_CLOSED_REQUEST:
        return await handle_client_disconnect(request, exc)
    if status >= 500 and status not in EXPECTED_SERVER_STATUSES:
        logger.warning("request failed: %s (%s)", exc.code, exc.message)
    else:  # client errors and load shedding are expected; INFO keeps overload cheap
        logger.info("request refused: %s (%s)", exc.code, exc.message)
    headers = http_headers(exc)
    if not _body_complete(request):
        # Answered before the whole body arrived: close, or the rest of it (perhaps trickling)
        # would be read as the next request with nothing left to time it.
        headers["Connection"] = "close"
    return _error_response(status, exc.code, exc.message, headers)


def _body_complete(request: Request) -> bool:
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return True
    return bool(getattr(request.state, "body_complete", False))


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()
    )
    return _error_response(422, "validation_error", problems or "invalid request")


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return _error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    logger.info("client disconnected before its answer; its work was dropped")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


Handler = Callable[[Request, Exception], Awaitable[Response]]
OIP_PREFIX = "/v2"  # the Open Inference Protocol: its own error shape, {"error": "message"}


def _protocol_shaped(handler: Handler) -> Handler:
    """``handler``, answering under ``/v2`` in the Open Inference Protocol's error shape (the
    same status and headers; the message alone as ``error``) and elsewhere as it is."""

    async def handle(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        path = request.url.path
        if not isinstance(response, JSONResponse) or not (
            path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")
        ):
            return response
        error = json.loads(bytes(response.body))["error"]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return JSONResponse(
            {"error": error["message"]}, status_code=response.status_code, headers=headers
        )

    return handle


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.DeepfakeError, _protocol_shaped(handle_service_error))
    app.add_exception_handler(RequestValidationError, _protocol_shaped(handle_validation_error))
    app.add_exception_handler(StarletteHTTPException, _protocol_shaped(handle_http_error))
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
