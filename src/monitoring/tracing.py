"""OpenTelemetry tracing, set up from the standard ``OTEL_*`` variables, off by default.

``OTEL_TRACES_EXPORTER`` picks the exporter: ``none`` (the default: no provider, no span is
ever made), ``console`` (each span printed as JSON on stdout when it ends) or ``otlp`` (OTLP over
HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, batched).
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` are read by the SDK itself, as everywhere else.

The request middleware starts a server span and makes it the *active* one (a context
variable); the engine records its steps as child spans from timestamps it keeps anyway, on the
event loop, so no span crosses a thread. Every helper here returns at once when no span is
active: with tracing off, the cost is one context-variable read.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from src.core.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"
EXPORTERS = ("none", "console", "otlp")
DEFAULT_SERVICE_NAME = "deepfake-detection"
INSTRUMENTATION_NAME = "src.serve"

AttributeValue = str | int | float | bool


@dataclass(frozen=True)
class ActiveSpan:
    """A recording span and the tracer that made it (children are made by the same one)."""

    tracer: Tracer
    span: Span

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"


_active: ContextVar[ActiveSpan | None] = ContextVar("dfd_active_span", default=None)
_trace_id: ContextVar[str | None] = ContextVar("dfd_trace_id", default=None)


def current() -> ActiveSpan | None:
    """The request's span, or None (tracing off, not sampled, or outside a request)."""
    return _active.get()


def current_trace_id() -> str | None:
    """The request's trace id (32 hex digits) for log lines, sampled or not; else None."""
    return _trace_id.get()


def activate(active: ActiveSpan | None, trace_id: str | None) -> tuple[Any, Any]:
    """Make ``active`` the current span and ``trace_id`` the logs' one; returns the tokens for
    :func:`deactivate`."""
    return _active.set(active), _trace_id.set(trace_id)


def deactivate(tokens: tuple[Any, Any]) -> None:
    _active.reset(tokens[0])
    _trace_id.reset(tokens[1])


def record_span(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    parent: ActiveSpan | None = None,
    error: bool = False,
) -> ActiveSpan | None:
    """A finished child span of ``parent`` (default: the active span) from two wall-clock
    timestamps; None, doing nothing, when there is no parent."""
    parent = parent if parent is not None else _active.get()
    if parent is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = parent.tracer.start_span(
        name,
        context=trace.set_span_in_context(parent.span),
        start_time=start_ns,
        attributes=attributes,
    )
    if error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=end_ns)
    return ActiveSpan(parent.tracer, span)


def record_linked_span(
    name: str,
    served: Sequence[ActiveSpan],
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: bool = False,
) -> None:
    """A span of its own trace, linked to each request span it ``served``: one batch forward
    pass belongs to many requests, so it is the child of none (OpenTelemetry's batch model)."""
    if not served:
        return
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link, Status, StatusCode

    # One link per request, however many of its items (a video's frames) the batch held.
    requests = {active.span.get_span_context().span_id: active for active in served}
    span = served[0].tracer.start_span(
        name,
        context=otel_context.Context(),  # a new root: not the child of whichever request is active
        links=[Link(active.span.get_span_context()) for active in requests.values()],
        start_time=start_ns,
        attributes=attributes,
    )
    if error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=end_ns)


class Tracing:
    """One app's tracer provider (never the process-global one, so apps in one process, as in
    tests, keep their spans apart)."""

    def __init__(self, provider: TracerProvider) -> None:
        from src import __version__

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)

    def request_span(self, scope: Mapping[str, Any], request_id: str) -> RequestSpan:
        return RequestSpan(self.tracer, scope, request_id)

    def shutdown(self) -> None:
        """Flush the spans still batched and stop the exporter."""
        self.provider.shutdown()


def exporter_name(environ: Mapping[str, str]) -> str:
    """``OTEL_TRACES_EXPORTER``, checked (a typo must not silently turn tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    name = environ.get(EXPORTER_VARIABLE, "none").strip().lower() or "none"
    if name not in EXPORTERS:
        raise ConfigurationError(
            f"{EXPORTER_VARIABLE}={name!r} is not supported; use one of {', '.join(EXPORTERS)}"
        )
    return name


def tracing_from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The app's tracing as the ``OTEL_*`` variables ask, or None when it is off."""
    environ = os.environ if environ is None else environ
    name = exporter_name(environ)
    if name == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_SAMPLER
    if name == "console":
        # One span per line, like the JSON logs around it; sys.stdout as it is now (the
        # exporter's default is the one at its import).
        exporter = ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


def traceparent(active: ActiveSpan) -> str:
    """The W3C ``traceparent`` header value of ``active``."""
    context = active.span.get_span_context()
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def header_getter() -> Any:
    """A getter for the propagator over ASGI ``(bytes, bytes)`` header pairs."""
    from opentelemetry.propagators.textmap import Getter

    class AsgiHeaders(Getter[Iterable[tuple[bytes, bytes]]]):
        def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
            wanted = key.lower().encode("latin-1")
            values = [v.decode("latin-1") for k, v in carrier if k.lower() == wanted]
            return values or None

        def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
            return [k.decode("latin-1") for k, _ in carrier]

    return AsgiHeaders()


class RequestSpan:
    """The server span of one HTTP request: the caller's W3C ``traceparent`` continued (or a
    new trace), the body's arrival as an ``upload.read`` child, the route and status at the
    end. Made only when tracing is on."""

    def __init__(self, tracer: Tracer, scope: Mapping[str, Any], request_id: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(
            scope.get("headers", []), getter=header_getter()
        )
        self.method = str(scope.get("method", ""))
        self.span = tracer.start_span(
            self.method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": self.method,
                "url.path": str(scope.get("path", "")),
                "url.scheme": str(scope.get("scheme", "http")),
                "request.id": request_id,
            },
        )
        self.active = ActiveSpan(tracer, self.span)
        self.trace_id = self.active.trace_id
        self.sampled = self.span.is_recording()
        self.traceparent = traceparent(self.active)
        self._tokens: tuple[Any, Any] | None = None

    def activate(self) -> RequestSpan:
        """Make this the current span (for the engine's child spans) and its trace id the one
        on log lines, in the calling task's context; :meth:`finish` undoes it."""
        self._tokens = activate(self.active if self.sampled else None, self.trace_id)
        return self

    def wrap_receive(self, receive: Any) -> Any:
        """``receive``, timing the request body from the first read to its last byte."""
        if not self.sampled:
            return receive
        started_ns = 0
        size = 0
        done = False

        async def timed() -> Any:
            nonlocal started_ns, size, done
            if done:
                return await receive()
            if not started_ns:
                started_ns = time.time_ns()
            message = await receive()
            if message.get("type") == "http.request":
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                    record_span(
                        "upload.read",
                        started_ns,
                        time.time_ns(),
                        {"http.request.body.size": size},
                        parent=self.active,
                    )
            elif message.get("type") == "http.disconnect":
                done = True
            return message

        return timed

    def finish(self, status: int, route: str) -> None:
        """End the span, named by the route template (bounded), and deactivate it."""
        from opentelemetry.trace import Status, StatusCode

        self.span.update_name(f"{self.method} {route}")
        self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        if self._tokens is not None:
            deactivate(self._tokens)
            self._tokens = None
