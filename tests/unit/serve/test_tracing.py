"""OpenTelemetry tracing through the app, recorded by the SDK's in-memory exporter: the server
span continues the caller's trace, the engine's steps are its children, the forward pass is its
own span linked to every request it served, and the trace id reaches logs and exemplars."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from src.core.errors import ConfigurationError
from src.core.settings import Settings
from src.engine.batcher import Batcher, BatchPolicy
from src.engine.events import NullEvents
from src.engine.executors import ModelRunner
from src.engine.preprocess import FaceCropper
from src.media.faces import Face
from src.monitoring import tracing
from src.monitoring.tracing import Tracing, tracing_from_env
from src.serve.app import create_app
from src.serve.metrics import exposition
from tests.helpers.api import AUTH, started_client
from tests.helpers.images import image_bytes
from tests.helpers.videos import video_bytes

pytestmark = pytest.mark.anyio
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


def _tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


class WholeImageDetector:
    """A face detector that finds one face filling the image."""

    def detect_faces(self, rgb: np.ndarray) -> list[Face]:
        return [Face(box=(0, 0, rgb.shape[1], rgb.shape[0]), score=0.9)]

    def detect_largest(self, rgb: np.ndarray) -> Face | None:
        return self.detect_faces(rgb)[0]


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {
        span.name: span
        for span in spans
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    }


async def test_a_request_is_one_trace_with_its_steps_and_a_linked_forward_pass(
    settings: Settings, exporter: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings, tracing=_tracing(exporter))
    async for client in started_client(app):
        app.state.service.preparer.face_cropper = FaceCropper(WholeImageDetector(), margin=1.0)
        exporter.clear()
        capsys.readouterr()
        response = await client.post(
            "/infer",
            content=image_bytes(),
            headers={**AUTH, "Content-Type": "image/jpeg", "traceparent": TRACEPARENT},
        )
        assert response.status_code == 200, response.text
        openmetrics, content_type = exposition(
            app.state.metrics.registry, "application/openmetrics-text; version=1.0.0"
        )
    spans = list(exporter.get_finished_spans())
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    assert server.name == "POST /infer"
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # the caller's trace continues
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/infer"
    children = _children(spans, server)
    assert {"upload.read", "decode", "face_detection", "queue_wait"} <= set(children)
    assert children["upload.read"].attributes == {"http.request.body.size": len(image_bytes())}
    for child in children.values():  # inside the request, in order of the pipeline
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    assert children["decode"].end_time <= children["face_detection"].start_time
    assert children["face_detection"].end_time <= children["queue_wait"].start_time
    (forward,) = [span for span in spans if span.name == "forward_pass"]
    assert forward.parent is None and forward.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in forward.links] == [server.context.span_id]
    assert forward.attributes is not None and forward.attributes["batch.size"] == 1
    # The result's store write: one span for the writer's batch, linked to the request it kept.
    (stored,) = [span for span in spans if span.name == "store.write"]
    assert stored.parent is None
    assert [link.context.span_id for link in stored.links] == [server.context.span_id]
    assert stored.attributes is not None and stored.attributes["store.outcome"] == "written"
    # The answer carries its own traceparent; every log line of the request its trace id.
    assert response.headers["traceparent"] == f"00-{TRACE_ID}-{server.context.span_id:016x}-01"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (access,) = [line for line in lines if line["logger"] == "src.access"]
    assert access["trace_id"] == TRACE_ID
    # The latency histogram's exemplar links a slow bucket to this trace (OpenMetrics only).
    assert content_type.startswith("application/openmetrics-text")
    latency = [
        line
        for line in openmetrics.decode().splitlines()
        if line.startswith("dfd_http_request_duration_seconds_bucket") and 'route="/infer"' in line
    ]
    assert any(f'# {{trace_id="{TRACE_ID}"}}' in line for line in latency), latency
    assert b"trace_id" not in exposition(app.state.metrics.registry, "text/plain")[0]


async def test_a_video_request_traces_its_preparation_and_every_forward_pass(
    settings_factory: Callable[..., Settings], exporter: InMemorySpanExporter
) -> None:
    app = create_app(settings_factory(max_batch_size=2), tracing=_tracing(exporter))
    async for client in started_client(app):
        exporter.clear()
        response = await client.post(
            "/infer/video?frames=4",
            content=video_bytes(frames=20, fps=10),
            headers={**AUTH, "Content-Type": "video/mp4"},
        )
        assert response.status_code == 200, response.text
    spans = list(exporter.get_finished_spans())
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    assert server.name == "POST /infer/video"
    prepare = _children(spans, server)["video.prepare"]
    assert prepare.attributes is not None and prepare.attributes["video.frames"] == 4
    assert prepare.attributes["video.decode_ms"] > 0
    passes = [span for span in spans if span.name == "forward_pass"]
    assert len(passes) == 2  # 4 frames in slices of max_batch_size=2
    for forward in passes:
        assert [link.context.span_id for link in forward.links] == [server.context.span_id]
        assert prepare.end_time <= forward.start_time


async def test_one_forward_pass_links_to_every_request_it_served(
    exporter: InMemorySpanExporter,
) -> None:
    traced = _tracing(exporter)
    runner = ModelRunner()
    batcher: Batcher[int, int] = Batcher(
        lambda items: [item * 2 for item in items],
        runner,
        BatchPolicy(max_batch_size=4, batch_timeout_s=0.2),
        NullEvents(),
        more_coming=lambda: True,
    )
    batcher.start()

    async def request(item: int) -> tuple[int, int]:
        span = traced.tracer.start_span(f"request-{item}")
        tokens = tracing.activate(tracing.ActiveSpan(traced.tracer, span), None)
        try:
            result = await batcher.submit(item)
        finally:
            tracing.deactivate(tokens)
            span.end()
        assert result.batch_size == 2
        return result.value, span.get_span_context().span_id

    try:
        (first, first_id), (second, second_id) = await asyncio.gather(request(1), request(2))
    finally:
        await batcher.stop()
        runner.shutdown()
    assert (first, second) == (2, 4)
    spans = list(exporter.get_finished_spans())
    (forward,) = [span for span in spans if span.name == "forward_pass"]
    assert {link.context.span_id for link in forward.links} == {first_id, second_id}
    assert forward.attributes is not None and forward.attributes["batch.size"] == 2
    waits = [span for span in spans if span.name == "queue_wait"]
    assert {span.parent.span_id for span in waits if span.parent} == {first_id, second_id}
    assert all(span.end_time <= forward.start_time for span in waits)


async def test_an_unsampled_request_still_propagates_but_records_nothing(
    settings: Settings, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    app = create_app(settings, tracing=_tracing(exporter))
    async for client in started_client(app):
        response = await client.post(
            "/infer", content=image_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200
    flags = int(response.headers["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # the sampled bit is off (other bits, e.g. "random", may be set)
    assert exporter.get_finished_spans() == ()


async def test_with_tracing_off_no_header_and_no_trace_id(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings)
    assert app.state.tracing is None  # OTEL_TRACES_EXPORTER unset
    async for client in started_client(app):
        capsys.readouterr()
        response = await client.get("/health", headers={"traceparent": TRACEPARENT})
    assert "traceparent" not in response.headers
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert lines and all(line["trace_id"] is None for line in lines)


async def test_the_console_exporter_prints_each_span(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "dfd-test")
    app = create_app(settings_factory())
    assert app.state.tracing is not None
    async for client in started_client(app):
        capsys.readouterr()
        await client.get("/health")
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (span,) = [record for record in records if "context" in record]  # one JSON object per line
    assert span["name"] == "GET /health" and span["kind"] == "SpanKind.SERVER"
    assert span["resource"]["attributes"]["service.name"] == "dfd-test"
    assert span["attributes"]["http.response.status_code"] == 200


class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: keeps what is posted to it."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_otlp_sends_the_spans_to_the_collector_named_by_the_standard_variable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    _Collector.received.clear()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    try:
        app = create_app(settings)
        async for client in started_client(app):
            response = await client.post(
                "/infer", content=image_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}
            )
            assert response.status_code == 200
        # The lifespan's end flushed the batch processor.
    finally:
        collector.shutdown()
        collector.server_close()
    assert _Collector.received, "no spans were exported"
    paths = {path for path, _, _ in _Collector.received}
    assert paths == {"/v1/traces"}
    body = b"".join(payload for _, _, payload in _Collector.received)
    assert all(ctype == "application/x-protobuf" for _, ctype, _ in _Collector.received)
    for name in (b"POST /infer", b"decode", b"queue_wait", b"forward_pass"):
        assert name in body, name


def test_the_exporter_variable_is_checked() -> None:
    assert tracing_from_env({}) is None
    assert tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        tracing_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
    )
    with pytest.raises(ConfigurationError, match="jaeger"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
    otlp = tracing_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert otlp is not None
    otlp.shutdown()


def test_no_span_helper_does_anything_outside_a_traced_request() -> None:
    assert tracing.current() is None and tracing.current_trace_id() is None
    assert tracing.record_span("decode", 1, 2) is None
    tracing.record_linked_span("forward_pass", [], 1, 2)
