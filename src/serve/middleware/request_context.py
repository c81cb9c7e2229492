"""Pure ASGI middleware: request id, access log, HTTP metrics and (when tracing is on) the
request's server span for every request."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.core.context import request_id_var
from src.monitoring.tracing import RequestSpan, Tracing
from src.serve.metrics import Metrics
from src.serve.schemas import error_body

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
TRACEPARENT_HEADER = b"traceparent"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_logger = logging.getLogger("src.access")
logger = logging.getLogger(__name__)


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == _REQUEST_ID_HEADER:
            candidate = value.decode("latin-1").strip()
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """Keeps or makes an ``X-Request-ID``, echoes it, logs one access line and counts metrics.

    With ``tracing``, each request also gets a server span (continuing the caller's W3C
    ``traceparent``), answers with its own ``traceparent``, and its trace id goes on every log
    line and as an exemplar on the latency histogram. Without, no span object is made."""

    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        # The labelled series, looked up once per label values rather than per request (the
        # values are bounded: methods, route templates, statuses).
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def _count(self, method: str, route: str, status: int, duration: float, span: Any) -> None:
        key = (method, route, str(status))
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.metrics.http_requests.labels(
                method=method, route=route, status=key[2]
            )
        counter.inc()
        histogram = self._latency.get(key[:2])
        if histogram is None:
            histogram = self._latency[key[:2]] = self.metrics.http_latency.labels(
                method=method, route=route
            )
        exemplar = {"trace_id": span.trace_id} if span is not None and span.sampled else None
        histogram.observe(duration, exemplar)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived_at"] = started
        status = 500
        status_sent = False
        span: RequestSpan | None = None
        if self.tracing is not None:
            span = self.tracing.request_span(scope, request_id).activate()
            receive = span.wrap_receive(receive)

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k != _REQUEST_ID_HEADER]
                headers.append((_REQUEST_ID_HEADER, request_id.encode()))
                if span is not None:
                    headers.append((TRACEPARENT_HEADER, span.traceparent.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged in full here; the client gets a generic 500 that leaks nothing.
            logger.exception(
                "unhandled error while serving %s %s", scope.get("method"), scope.get("path")
            )
            if status_sent:
                raise
            response = JSONResponse(
                error_body("internal_error", "internal server error", request_id), status_code=500
            )
            await response(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            self.metrics.http_in_flight.dec()
            method = scope.get("method", "")
            route = route_template(scope)
            self._count(method, route, status, duration, span)
            if access_logger.isEnabledFor(logging.INFO):  # no record built for nobody
                extra: dict[str, Any] = {
                    "method": method,
                    "path": scope.get("path", ""),
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                    "key_id": getattr(state.get("caller"), "key_id", None),
                }
                access_logger.info("%s %s %s", method, scope.get("path", ""), status, extra=extra)
            if span is not None:
                span.finish(status, route)
            request_id_var.reset(token)
