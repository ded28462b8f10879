"""
OpenTelemetry export through the SDKs: a local OTLP/HTTP receiver gets one CLIENT span
per call, a child of the caller's traceparent, with the GenAI attributes and the cost,
and the token usage histogram; a dead collector fails no call.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest, ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.conftest import serving, start_proxy
from tests.fakes import CHAT_USAGE
from tests.test_sdk import anthropic_client, in_thread, openai_client

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector(Resource):
    """
    An OTLP/HTTP receiver: keeps every span and metric it is sent.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Span] = []
        self.metrics: list[Any] = []
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        body = request.content.read()
        self.bodies.append(body)
        request.setHeader(b"content-type", b"application/x-protobuf")
        if request.path == b"/v1/traces":
            export = ExportTraceServiceRequest.FromString(body)
            self.spans += [span for resource in export.resource_spans for scope in resource.scope_spans for span in scope.spans]
            return ExportTraceServiceResponse().SerializeToString()
        export = ExportMetricsServiceRequest.FromString(body)
        self.metrics += [metric for resource in export.resource_metrics for scope in resource.scope_metrics for metric in scope.metrics]
        return ExportMetricsServiceResponse().SerializeToString()


@pytest.fixture
def collector(reactor: Any) -> Any:
    yield from serving(reactor, Collector())


def attributes(span: Span) -> dict[str, Any]:
    found = {}
    for attribute in span.attributes:
        value = attribute.value
        found[attribute.key] = getattr(value, value.WhichOneof("value"))
    return found


@pytest_twisted.ensureDeferred
async def test_spans_and_token_metrics(reactor: Any, tmp_path: Path, upstream: Any, collector: Any) -> None:
    proxy = start_proxy(reactor, tmp_path, upstream.url, otlp_endpoint=collector.url)
    messages = [{"role": "user", "content": "hi"}]

    def calls() -> None:
        openai_client(proxy).chat.completions.create(
            model="gpt-4o", messages=messages,
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-ModelTrack-Team": "ml"},
        )
        anthropic_client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=messages)

    try:
        await in_thread(calls)
    finally:
        await proxy.service.stopService()  # exports what is queued
    chat_event, message_event = proxy.events()
    message, chat = sorted(collector.spans, key=lambda span: span.name)
    assert (chat.name, message.name) == ("chat gpt-4o", "chat claude-sonnet-4-5")
    assert chat.kind == Span.SpanKind.SPAN_KIND_CLIENT
    # A child of the caller's span, in the caller's trace; the other call starts its own.
    assert (chat.trace_id.hex(), chat.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    assert message.parent_span_id == b"" and message.trace_id.hex() != TRACE_ID
    found = attributes(chat)
    assert found["gen_ai.provider.name"] == "openai" and found["gen_ai.operation.name"] == "chat"
    assert (found["gen_ai.request.model"], found["gen_ai.response.model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (CHAT_USAGE["prompt_tokens"], CHAT_USAGE["completion_tokens"])
    assert found["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert Decimal(str(found["modeltrack.cost_usd"])) == Decimal(str(chat_event["cost_usd"]))
    assert found["modeltrack.team"] == "ml" and found["modeltrack.request_id"] == chat_event["request_id"]
    assert attributes(message)["gen_ai.usage.cache_creation.input_tokens"] == message_event["cache_write_tokens"]
    assert (chat.end_time_unix_nano - chat.start_time_unix_nano) / 1e6 == pytest.approx(chat_event["latency_ms"], abs=0.01)
    [usage] = [metric for metric in collector.metrics if metric.name == "gen_ai.client.token.usage"]
    sums = {}
    for point in usage.histogram.data_points:
        point_attributes = {a.key: a.value.string_value for a in point.attributes}
        sums[(point_attributes["gen_ai.provider.name"], point_attributes["gen_ai.token.type"])] = point.sum
    assert sums[("openai", "input")] == CHAT_USAGE["prompt_tokens"]
    assert sums[("anthropic", "output")] == message_event["output_tokens"]


@pytest_twisted.ensureDeferred
async def test_a_dead_collector_fails_no_call(reactor: Any, tmp_path: Path, upstream: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the stop's last export gives up soon
    proxy = start_proxy(reactor, tmp_path, upstream.url, otlp_endpoint="http://127.0.0.1:9")
    client = openai_client(proxy)
    try:
        for _ in range(20):
            reply = await in_thread(client.chat.completions.create, model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            assert reply.usage.prompt_tokens == CHAT_USAGE["prompt_tokens"]
    finally:
        await proxy.service.stopService()
    assert [e["outcome"] for e in proxy.events()] == ["ok"] * 20
