"""Spans of client requests with OpenTelemetry: one server span per request, a client span per
upstream attempt under it, with the GenAI semantic-convention attributes and the gateway's own.

A client's W3C `traceparent` makes the request span its child; each attempt's context goes upstream
in the attempt request's `traceparent`. Spans leave through a BatchSpanProcessor: ending a span only
puts it on a bounded queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default; full, spans are dropped) that a
thread of the SDK exports, so a slow or unreachable collector never holds a request.

Message contents are recorded only with `telemetry.capture_content` (they would leave for a third
party): the request's messages as `gen_ai.input.messages`, a non-streamed reply's as
`gen_ai.output.messages`, both JSON in the OpenAI chat format. A stream's output is not assembled
for this. Nothing here may fail a request: a tracing error is logged and the request goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["RequestTrace", "Tracing"]

log = logging.getLogger("gaud.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_OTLP_TRACES_PATH = "/v1/traces"
#: Seconds the spans still queued at shutdown may take to export before the exporter's retries
#: (towards an unreachable collector: up to OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) are cut short.
SHUTDOWN_GRACE = 3.0

#: Request fields -> GenAI request attributes (the canonical, OpenAI-format body).
_REQUEST_FIELDS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)


def _exporter(get: Callable[[str], Any], environ: Mapping[str, str]) -> SpanExporter:
    """OTLP over HTTP (protobuf) unless OTEL_TRACES_EXPORTER=console; `telemetry.endpoint` is the
    collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT), else the exporter reads the OTEL_* variables."""
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: spans are sent as http/protobuf",
                    environ["OTEL_EXPORTER_OTLP_PROTOCOL"])
    base = get("telemetry.endpoint")
    return OTLPSpanExporter(endpoint=f"{str(base).rstrip('/')}{_OTLP_TRACES_PATH}" if base else None)


class Tracing:
    """The tracer of one app: its own TracerProvider (not the global one, so several apps can share
    a process), sampled as OTEL_TRACES_SAMPLER says (parent-based, always on, by default)."""

    def __init__(
        self, exporter: SpanExporter | None = None, *, service_name: str | None = None, capture_content: bool = False,
        processor: SpanProcessor | None = None,
    ) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name} if service_name else {}))
        self.exporter = exporter
        if processor is None:
            processor = BatchSpanProcessor(exporter or ConsoleSpanExporter())
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("gaud-engine")
        self.capture_content = capture_content

    @classmethod
    def from_settings(cls, get: Callable[[str], Any], environ: Mapping[str, str]) -> Tracing:
        name = get("telemetry.service_name") or environ.get("OTEL_SERVICE_NAME") or "gaud-engine"
        return cls(_exporter(get, environ), service_name=name, capture_content=bool(get("telemetry.capture_content")))

    def request(self, headers: Mapping[str, str], operation: str, path: str, started: float) -> RequestTrace:
        """The span of one client request, a child of the client's `traceparent` if it sent one;
        `started` is the request's time.perf_counter() at arrival."""
        parent = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        start_ns = time.time_ns() - int((time.perf_counter() - started) * 1e9)
        span = self.tracer.start_span(
            operation, context=parent, kind=SpanKind.SERVER, start_time=start_ns,
            attributes={"gen_ai.operation.name": operation, "http.request.method": "POST", "url.path": path},
        )
        return RequestTrace(self, span, operation)

    def shutdown(self) -> None:
        """Export what is queued and stop, within SHUTDOWN_GRACE seconds; blocking: run in a thread."""
        cut = threading.Timer(SHUTDOWN_GRACE, self.exporter.shutdown) if self.exporter is not None else None
        if cut is not None:
            cut.daemon = True
            cut.start()
        try:
            self.provider.shutdown()
        finally:
            if cut is not None:
                cut.cancel()


class RequestTrace:
    """One client request's span and the span of its current upstream attempt (kept on the
    pipeline's Exchange as `span`)."""

    __slots__ = ("_attempt", "_operation", "_response", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span, operation: str) -> None:
        self._tracing = tracing
        self.span = span
        self._operation = operation
        self._attempt: Span | None = None
        self._response: dict[str, Any] = {}

    # -- attempts (engine.pipeline.gateway's attempt loop) -------------------------------------------
    def attempt(self, body: Mapping[str, Any], deployment: str, provider: str, model: str | None, number: int) -> None:
        """A new upstream attempt starts (a child of the request span)."""
        self._end_attempt()
        attributes: dict[str, Any] = {  # the request's parameters are on the request span only: each attribute costs ~1 µs
            "gen_ai.operation.name": self._operation, "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "gen_ai.request.model": model or str(body.get("model")), "gaud.deployment": deployment, "gaud.attempt": number,
        }
        self._response = {}
        self._attempt = self._tracing.tracer.start_span(
            f"{self._operation} {attributes['gen_ai.request.model']}", context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT, attributes=attributes,
        )

    def inject(self, headers: dict[str, str]) -> dict[str, str]:
        """`headers` (a spec's cached dict: not changed) with the current attempt's `traceparent`."""
        if self._attempt is None:
            return headers
        out = dict(headers)
        _PROPAGATOR.inject(out, context=trace.set_span_in_context(self._attempt))
        return out

    def failed(self, kind: str | None) -> None:
        """The current attempt failed with error `kind` (None: cancelled, the client went away)."""
        if self._attempt is None:
            return
        if kind is None:
            self._attempt.set_attribute("gaud.cancelled", True)
        else:
            self._attempt.set_attribute("error.type", kind)
            self._attempt.set_status(StatusCode.ERROR, kind)
        self._end_attempt()

    def served(self, completion: Mapping[str, Any], usage: Mapping[str, Any] | None, cost: float) -> None:
        """A non-streamed attempt answered: its reply's model, id and finish reasons; ended here."""
        choices = completion.get("choices") or ()
        self.response(completion.get("id"), completion.get("model"), [c.get("finish_reason") for c in choices])
        if self._tracing.capture_content and choices:
            self._response["gen_ai.output.messages"] = orjson.dumps([c.get("message") for c in choices]).decode()
        self._end_attempt(usage, cost)

    def counted(self, tokens: int | None) -> None:
        """A token-count attempt answered with `tokens` (None: its reply held no count, a
        `response_parsing` failure: the estimate is answered); ended here."""
        if tokens is None:
            self.failed("response_parsing")
            return
        self._response["gen_ai.usage.input_tokens"] = tokens
        self._end_attempt()

    def answered_count(self, tokens: int, source: str) -> None:
        """A token-count request's answer: the count and who made it (`provider` or `estimate`, as
        the x-gaud-token-count header says)."""
        self.span.set_attributes({"gen_ai.usage.input_tokens": tokens, "gaud.token_count": source})

    def response(self, response_id: Any, model: Any, finish_reasons: list[Any]) -> None:
        """What the upstream said it answered with (for a stream, known at its end)."""
        if response_id:
            self._response["gen_ai.response.id"] = str(response_id)
        if model:
            self._response["gen_ai.response.model"] = str(model)
        reasons = [str(r) for r in finish_reasons if r]
        if reasons:
            self._response["gen_ai.response.finish_reasons"] = reasons

    def _end_attempt(self, usage: Mapping[str, Any] | None = None, cost: float | None = None) -> None:
        span, self._attempt = self._attempt, None
        if span is None:
            return
        span.set_attributes(self._response)
        if usage:
            span.set_attributes(_usage_attributes(usage))
        if cost is not None:
            span.set_attribute("gaud.cost_usd", cost)
        span.end()

    # -- the request's end (engine.pipeline.stages) -------------------------------------------------
    def end(self, exchange: Any) -> None:
        """The request is answered (a stream: its last byte sent). `exchange` is the pipeline's
        Exchange, read by attribute. Never raises."""
        try:
            self._end(exchange)
        except Exception:
            log.exception("could not end the trace of request %s", getattr(exchange, "request_id", "?"))

    def _end(self, exchange: Any) -> None:
        span, error = self.span, exchange.error
        if self._attempt is not None:  # a stream's attempt lasts as long as the stream
            if error is not None:
                self._attempt.set_attribute("error.type", error.kind)
                self._attempt.set_status(StatusCode.ERROR, error.kind)
            self._end_attempt(exchange.usage, exchange.cost)
        if not span.is_recording():
            span.end()
            return
        body = exchange.body if isinstance(exchange.body, dict) else {}
        alias = exchange.alias or body.get("model")
        if alias:
            span.update_name(f"{self._operation} {alias}")
        attributes: dict[str, Any] = {
            **_request_attributes(body), **self._response,
            "gaud.request_id": exchange.request_id, "gaud.alias": alias or "", "gaud.attempts": exchange.attempts,
            "gaud.cache_hit": exchange.cache_hit, "gaud.cost_usd": exchange.cost, "http.response.status_code": exchange.status,
        }
        if body.get("model"):
            attributes["gen_ai.request.model"] = str(body["model"])
        if exchange.deployment:
            attributes["gaud.deployment"] = exchange.deployment
        if exchange.usage:
            attributes.update(_usage_attributes(exchange.usage))
        if exchange.stream and exchange.first_byte is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = exchange.first_byte - exchange.started
        if self._tracing.capture_content and "messages" in body:
            attributes["gen_ai.input.messages"] = orjson.dumps(body["messages"]).decode()
        if error is not None:
            attributes["error.type"] = error.kind
        span.set_attributes(attributes)
        if exchange.status >= 500:
            span.set_status(StatusCode.ERROR, error.kind if error is not None else None)
        span.end()


def _request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The GenAI request attributes of a canonical request (no contents)."""
    out: dict[str, Any] = {}
    for name, attribute in _REQUEST_FIELDS:
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[attribute] = value
    stop = body.get("stop")
    if stop:
        out["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    if "stream" in body:
        out["gen_ai.request.stream"] = bool(body["stream"])
    return out


def _usage_attributes(usage: Mapping[str, Any]) -> dict[str, Any]:
    out = {"gen_ai.usage.input_tokens": int(usage.get("prompt_tokens") or 0),
           "gen_ai.usage.output_tokens": int(usage.get("completion_tokens") or 0)}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        out["gen_ai.usage.cache_read.input_tokens"] = int(cached)
    return out
