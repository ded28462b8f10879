"""
OpenTelemetry export (C{--otlp-endpoint}, C{pip install 'modeltrack[otel]'}): one span
per metered call, with the GenAI semantic conventions' attributes (v1.41) and the cost,
as a child of the caller's W3C C{traceparent}, and the C{gen_ai.client.token.usage}
histogram, sent over OTLP/HTTP.

The SDK's batch processors export from threads of their own: a call only hands its
finished span to a bounded queue (dropped when full), so a collector that is slow or
gone never slows or fails a call. The exporters take the SDK's environment settings
(C{OTEL_EXPORTER_OTLP_TIMEOUT}, C{OTEL_EXPORTER_OTLP_HEADERS}, ...).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from modeltrack.accounting.records import CallRecord

#: The conventions' provider names, where they differ from the events'.
PROVIDER_NAMES = {"azure": "azure.ai.openai", "bedrock": "aws.bedrock", "google": "gcp.gemini", "vertex": "gcp.vertex_ai"}
#: The token histogram's buckets, as the conventions advise.
TOKEN_BUCKETS = [4**n for n in range(14)]
#: Attribution labels, as span attributes under modeltrack.*.
LABELS = ("team", "app", "feature", "session_id", "customer_tier", "prompt_template", "key_name", "key_id", "client")
_propagator = TraceContextTextMapPropagator()


def operation(endpoint: str) -> str:
    """
    The conventions' C{gen_ai.operation.name} for an API route.
    """
    if "embed" in endpoint:
        return "embeddings"
    if endpoint.endswith("/v1/completions"):
        return "text_completion"
    if "generateContent" in endpoint or "GenerateContent" in endpoint:
        return "generate_content"
    return "chat"


class OtlpExport:
    """
    A sink of L{modeltrack.accounting.records}: each call's span and token counts, exported in
    batches by the SDK's threads to C{endpoint} (C{/v1/traces}, C{/v1/metrics}).
    """

    def __init__(self, endpoint: str, *, metrics_seconds: float = 30.0, span_delay_ms: int = 1000) -> None:
        base = endpoint.rstrip("/")
        resource = Resource.create({"service.name": "modeltrack"})
        self._traces = TracerProvider(resource=resource)
        self._traces.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"), max_queue_size=8192, schedule_delay_millis=span_delay_ms)
        )
        self._tracer = self._traces.get_tracer("modeltrack")
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics"), export_interval_millis=metrics_seconds * 1000
        )
        self._metrics = MeterProvider(resource=resource, metric_readers=[reader])
        self._tokens = self._metrics.get_meter("modeltrack").create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )

    def __call__(self, record: CallRecord) -> None:
        event = record.event
        provider = PROVIDER_NAMES.get(event["provider"], event["provider"])
        name = operation(event["endpoint"])
        requested = event["requested_model"] or event["model"]
        common = {
            "gen_ai.operation.name": name,
            "gen_ai.provider.name": provider,
            **({"gen_ai.request.model": requested} if requested else {}),
            **({"gen_ai.response.model": event["model"]} if event["model"] else {}),
        }
        attributes: dict[str, Any] = {
            **common,
            "http.response.status_code": event["status_code"],
            "modeltrack.request_id": event["request_id"],
            "modeltrack.outcome": str(event["outcome"]),
            "modeltrack.endpoint": event["endpoint"],
        }
        if record.price.cost_usd is not None:
            attributes["modeltrack.cost_usd"] = float(record.price.cost_usd)
        if event["usage_complete"] or event["input_tokens"] or event["output_tokens"]:
            attributes.update({
                "gen_ai.usage.input_tokens": event["input_tokens"],
                "gen_ai.usage.output_tokens": event["output_tokens"],
                "gen_ai.usage.cache_read.input_tokens": event["cache_read_tokens"],
                "gen_ai.usage.cache_creation.input_tokens": event["cache_write_tokens"],
            })
        if event["service_tier"]:
            attributes["modeltrack.service_tier"] = event["service_tier"]
        for label in LABELS:
            if event.get(label) is not None:
                attributes[f"modeltrack.{label}"] = event[label]
        parent = _parent(record.traceparent)
        end = int(record.ended * 1e9)
        span = self._tracer.start_span(
            f"{name} {requested}" if requested else name, context=parent, kind=SpanKind.CLIENT,
            attributes=attributes, start_time=end - int(event["latency_ms"] * 1e6),
        )
        if event["outcome"] != "ok":
            span.set_attribute("error.type", event["error_type"] or str(event["outcome"]))
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)
        if event["input_tokens"] or event["output_tokens"]:
            self._tokens.record(event["input_tokens"], {**common, "gen_ai.token.type": "input"})
            self._tokens.record(event["output_tokens"], {**common, "gen_ai.token.type": "output"})

    def shutdown(self) -> None:
        """
        Export what is queued and stop (blocking: run it in a thread).
        """
        self._traces.shutdown()
        self._metrics.shutdown()


def _parent(traceparent: bytes | None) -> Context | None:
    if not traceparent:
        return None
    context = _propagator.extract({"traceparent": traceparent.decode("latin-1")})
    return context or None
