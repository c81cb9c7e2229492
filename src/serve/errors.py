"""Exception handlers: every error leaves as the one JSON shape with the request id."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from src.exceptions import DeepfakeServiceError
from src.inference import ClientDisconnectedError
from src.request_context import current_request_id
from src.schemas import error_body

logger = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, current_request_id()), status_code=status, headers=headers
    )


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DeepfakeServiceError)
    if exc.status_code >= 500 and exc.status_code not in (503, 504):
        logger.warning("request failed: %s (%s)", exc.code, exc.message)
    else:  # client errors and load shedding are expected; INFO keeps overload cheap
        logger.info("request refused: %s (%s)", exc.code, exc.message)
    return _error_response(exc.status_code, exc.code, exc.message, exc.headers)


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


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DeepfakeServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(ClientDisconnectedError, handle_client_disconnect)
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
