"""OpenTelemetry tracing: a server span per client request, a client span per upstream attempt, the
GenAI attributes, W3C traceparent in and out, no contents without consent, and export that never
holds a request. In process: the official openai SDK over ASGI against the fake upstream; spans
caught by the SDK's in-memory exporter, or sent over OTLP/HTTP to a fake collector decoding the
protobuf."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engine.config import load_settings
from engine.observability import otel
from engine.observability.otel import Tracing
from engine.observability.tracing import load_tracing, wanted
from engine.spec.loader import load_catalog
from engine.web.server import create_app

from .conftest import ROOT, free_port, provider_env, start_gateway
from .fakes import LoopbackServer

SECRET_TEXT = "a very private question"
HELLO = [{"role": "user", "content": SECRET_TEXT}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
OPENAI_GPT, GEMINI = "openai/gpt-4o", "gemini/gemini-2.5-flash"

ROUTES = {
    "chain": {
        "retry": 'error.kind in ["upstream_5xx", "overloaded"] && attempt < 2',
        "fallback": 'error.kind in ["upstream_5xx", "overloaded"]',
        "candidates": [{"provider": "openai", "model": "gpt-4o"}, {"provider": "gemini", "model": "gemini-2.5-flash"}],
    },
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in ("providers.d", "pricing.d", "ingress.d"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text())
    routes["aliases"].update(ROUTES)
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes))
    return tmp_path


def make_app(tree: Path, upstream_url: str, tmp: Path, **env: str) -> Any:
    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'g.db'}",
                                      "GAUD_AUDIT_JOURNAL": "false", **env})
    app = create_app(load_catalog(tree, environ=provider_env(upstream_url)), settings)

    async def no_sleep(seconds: float) -> None:  # backoff without waiting
        return None

    app.app.state.gateway.sleep = no_sleep
    return app


def in_memory(app: Any, *, capture_content: bool = False) -> InMemorySpanExporter:
    """Trace `app`'s requests into an in-memory exporter (spans exported as each ends)."""
    exporter = InMemorySpanExporter()
    tracing = Tracing(processor=SimpleSpanProcessor(exporter), capture_content=capture_content)
    app.app.state.services.pipeline.tracing = tracing
    return exporter


async def serving(app: Any, calls: Any) -> Any:
    """Run `calls(client)` with the app started (lifespan) and an openai SDK client on it."""
    starlette = app.app
    async with starlette.router.lifespan_context(starlette), httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        client = openai.AsyncOpenAI(base_url="http://gaud/v1", api_key="unused", max_retries=0, http_client=http,
                                    default_headers={"traceparent": TRACEPARENT})
        return await calls(client)


def failing_503(upstream: Any) -> None:
    upstream.reply(status=503, json={"error": {"message": "busy", "type": "server_error"}})


def traceparent_span(header: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = header.split("-")
    assert (version, flags) == ("00", "01")
    return trace_id, span_id


def test_a_retried_fallen_back_stream_is_one_request_span_over_its_attempt_spans(tree, upstream, tmp_path):
    app = make_app(tree, upstream.url, tmp_path)
    exporter = in_memory(app)
    failing_503(upstream)
    failing_503(upstream)
    upstream.reply_fixture("gemini", "stream_text.sse")

    async def calls(client: openai.AsyncOpenAI) -> str:
        stream = await client.chat.completions.create(model="chain", messages=HELLO, stream=True,
                                                      stream_options={"include_usage": True}, max_tokens=50,
                                                      temperature=0.2)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    text = asyncio.run(serving(app, calls))
    assert "Lichens" in text
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.attributes["gaud.attempt"])
    assert len(spans) == 4 and len(attempts) == 3

    # The client's traceparent is honoured: same trace, the request span its child.
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == CLIENT_SPAN
    assert request.name == "chat chain"
    for attempt in attempts:
        assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
        assert attempt.context.trace_id == request.context.trace_id
        assert request.start_time <= attempt.start_time and attempt.end_time <= request.end_time

    first, second, served = attempts
    assert [a.attributes["gaud.deployment"] for a in attempts] == [OPENAI_GPT, OPENAI_GPT, GEMINI]
    assert [a.attributes["gen_ai.provider.name"] for a in attempts] == ["openai", "openai", "gemini"]
    assert [a.attributes["gaud.attempt"] for a in attempts] == [1, 2, 3]
    for failed in (first, second):
        assert failed.attributes["error.type"] == "overloaded" and failed.status.status_code == StatusCode.ERROR
        assert failed.end_time <= served.start_time
    assert "error.type" not in served.attributes and served.status.status_code == StatusCode.UNSET
    assert served.name == "chat gemini-2.5-flash" and served.attributes["gen_ai.request.model"] == "gemini-2.5-flash"
    assert served.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # Usage is known at the stream's end only: the served attempt (and the request) ended with the stream.
    assert served.attributes["gen_ai.usage.output_tokens"] > 0 and served.attributes["gaud.cost_usd"] > 0

    # Each upstream request carried the traceparent of its own attempt span.
    sent = [traceparent_span(r.headers["traceparent"]) for r in upstream.requests]
    assert sent == [(TRACE_ID, format(a.context.span_id, "016x")) for a in attempts]

    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "chain"
    assert attributes["gen_ai.request.max_tokens"] == 50 and attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gaud.alias"] == "chain" and attributes["gaud.deployment"] == GEMINI
    assert attributes["gaud.attempts"] == 3 and attributes["gaud.cache_hit"] is False
    assert attributes["gaud.cost_usd"] == served.attributes["gaud.cost_usd"]
    assert attributes["gen_ai.usage.input_tokens"] == served.attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert attributes["http.response.status_code"] == 200 and "error.type" not in attributes
    # No contents without telemetry.capture_content.
    everything = json.dumps([dict(s.attributes) for s in spans])
    assert SECRET_TEXT not in everything and "Lichens" not in everything and "messages" not in everything


def test_contents_are_recorded_only_with_capture_content(tree, upstream, tmp_path):
    app = make_app(tree, upstream.url, tmp_path)
    exporter = in_memory(app, capture_content=True)
    upstream.reply_fixture("openai", "chat_completion_text.json")

    async def calls(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(model="gpt-4o", messages=HELLO)

    reply = asyncio.run(serving(app, calls))
    (request,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    (attempt,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert json.loads(request.attributes["gen_ai.input.messages"]) == HELLO
    output = json.loads(attempt.attributes["gen_ai.output.messages"])
    assert output[0]["content"] == reply.choices[0].message.content
    assert attempt.attributes["gen_ai.response.model"] == reply.model
    assert attempt.attributes["gen_ai.response.id"] == reply.id


def test_a_failed_request_span_carries_the_error_kind(tree, upstream, tmp_path):
    app = make_app(tree, upstream.url, tmp_path)
    exporter = in_memory(app)
    failing_503(upstream)
    failing_503(upstream)
    upstream.reply_fixture("gemini", "error_503_unavailable.json")
    upstream.reply_fixture("gemini", "error_503_unavailable.json")

    async def calls(client: openai.AsyncOpenAI) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(model="chain", messages=HELLO)
        return failed.value

    error = asyncio.run(serving(app, calls))
    (request,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert request.attributes["error.type"] == error.code == "all_failed"
    assert request.attributes["http.response.status_code"] == error.status_code >= 500
    assert request.status.status_code == StatusCode.ERROR
    assert request.attributes["gaud.attempts"] == 4 and not upstream.replies


# -- count_tokens ------------------------------------------------------------------------------------
COUNT_PROMPT = [{"role": "user", "content": "Hello " * 50}]


async def _counts(app: Any, *bodies: dict[str, Any], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """POST each body to the Anthropic format's count_tokens route, with the client's traceparent."""
    starlette = app.app
    async with starlette.router.lifespan_context(starlette), httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        return [await http.post("http://gaud/v1/messages/count_tokens", json=body,
                                headers=headers or {"traceparent": TRACEPARENT}) for body in bodies]


def test_a_count_tokens_request_has_its_request_span_and_the_counting_call_its_attempt_span(tree, upstream, tmp_path):
    app = make_app(tree, upstream.url, tmp_path)
    exporter = in_memory(app)
    upstream.reply(json={"input_tokens": 321})
    (reply,) = asyncio.run(_counts(app, {"model": "claude-sonnet-4", "messages": COUNT_PROMPT}))
    assert reply.json() == {"input_tokens": 321} and reply.headers["x-gaud-token-count"] == "provider"

    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (attempt,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == CLIENT_SPAN
    assert request.name == "count_tokens claude-sonnet-4"
    assert request.attributes["gen_ai.operation.name"] == "count_tokens"
    assert request.attributes["url.path"] == "/v1/messages/count_tokens"
    assert request.attributes["gen_ai.request.model"] == "claude-sonnet-4"
    assert request.attributes["gen_ai.usage.input_tokens"] == 321 and request.attributes["gaud.token_count"] == "provider"
    assert request.attributes["http.response.status_code"] == 200 and "error.type" not in request.attributes
    assert request.attributes["gaud.attempts"] == 1
    assert "gen_ai.request.max_tokens" not in request.attributes  # the 1 validation needs is no request's

    assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
    assert request.start_time <= attempt.start_time and attempt.end_time <= request.end_time
    assert attempt.name == "count_tokens claude-sonnet-4-20250514"
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic" and attempt.attributes["gaud.attempt"] == 1
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 321 and attempt.status.status_code == StatusCode.UNSET
    # The counting call carried the attempt span's traceparent.
    assert traceparent_span(upstream.last().headers["traceparent"]) == (TRACE_ID, format(attempt.context.span_id, "016x"))
    assert "Hello" not in json.dumps([dict(s.attributes) for s in spans])  # no contents without consent


def test_a_failed_or_missing_count_is_traced_as_the_estimate(tree, upstream, tmp_path):
    app = make_app(tree, upstream.url, tmp_path)
    exporter = in_memory(app)
    upstream.reply(status=500, json={"error": {"type": "api_error", "message": "boom"}})
    upstream.reply(json={"count": 5})
    failed, empty, uncounted, refused = asyncio.run(_counts(
        app, {"model": "claude-sonnet-4", "messages": COUNT_PROMPT}, {"model": "claude-sonnet-4", "messages": COUNT_PROMPT},
        {"model": "gpt-4o", "messages": COUNT_PROMPT}, {"model": "claude-sonnet-4", "messages": 3}))
    estimate = uncounted.json()["input_tokens"]
    assert [r.headers.get("x-gaud-token-count") for r in (failed, empty, uncounted)] == ["estimate"] * 3
    assert refused.status_code == 400 and len(upstream.requests) == 2

    spans = exporter.get_finished_spans()
    requests = sorted((s for s in spans if s.kind == SpanKind.SERVER), key=lambda s: s.start_time)
    attempts = sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert len(requests) == 4 and len(attempts) == 2  # gpt-4o's spec has no counting endpoint: no call, no attempt span
    assert [a.parent.span_id for a in attempts if a.parent] == [r.context.span_id for r in requests[:2]]
    assert [a.attributes["error.type"] for a in attempts] == ["upstream_5xx", "response_parsing"]
    assert all(a.status.status_code == StatusCode.ERROR for a in attempts)
    for request in requests[:3]:  # the count still answered: the request is fine, with the estimate
        assert request.attributes["gaud.token_count"] == "estimate"
        assert request.attributes["gen_ai.usage.input_tokens"] == estimate
        assert "error.type" not in request.attributes and request.status.status_code == StatusCode.UNSET
    assert requests[3].attributes["error.type"] == "invalid_request"
    assert requests[3].attributes["http.response.status_code"] == 400 and "gaud.token_count" not in requests[3].attributes
    assert [r.attributes["gaud.attempts"] for r in requests] == [1, 1, 0, 0]  # the provider asked, or not


# -- export over OTLP/HTTP ----------------------------------------------------------------------------
class Collector:
    """A fake OTLP/HTTP collector: decodes each export; holds the first until `release` is set."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self._server = LoopbackServer()
        self.url = ""

    async def _export(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        message = ExportTraceServiceRequest.FromString(raw)
        self.arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 20)
        for resource in message.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return web.Response(content_type="application/x-protobuf", body=b"")

    def __enter__(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self.url = self._server.serve(app)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.stop()


def test_spans_reach_an_otlp_collector_and_a_held_export_holds_no_request(tree, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1")  # export at once, not after 5 s
    with Collector() as collector:
        app = make_app(tree, upstream.url, tmp_path, GAUD_TELEMETRY_ENDPOINT=collector.url,
                       GAUD_TELEMETRY_SERVICE_NAME="gaud-test")
        upstream.reply_fixture("openai", "chat_completion_text.json")
        upstream.reply_fixture("openai", "chat_completion_text.json")

        async def calls(client: openai.AsyncOpenAI) -> None:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert await asyncio.to_thread(collector.arrived.wait, 10), "the first request's spans were not exported"
            # The collector now holds that export unanswered; a request is served all the same.
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            assert not collector.release.is_set() and not collector.spans
            collector.release.set()

        asyncio.run(serving(app, calls))  # its shutdown exports what is still queued
    servers = [span for service, span in collector.spans if span.kind == span.SPAN_KIND_SERVER]
    clients = [span for service, span in collector.spans if span.kind == span.SPAN_KIND_CLIENT]
    assert {service for service, _ in collector.spans} == {"gaud-test"}
    assert len(servers) == 2 and len(clients) == 2
    assert all(s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == CLIENT_SPAN for s in servers)
    assert {c.parent_span_id for c in clients} == {s.span_id for s in servers}
    attributes = {a.key: a.value for a in servers[0].attributes}
    assert attributes["gaud.alias"].string_value == "gpt-4o"
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0


def test_an_unreachable_collector_does_not_stop_requests(tree, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1")
    monkeypatch.setattr(otel, "SHUTDOWN_GRACE", 0.5)
    app = make_app(tree, upstream.url, tmp_path, GAUD_TELEMETRY_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert app.app.state.services.pipeline.tracing is not None
    for _ in range(3):
        upstream.reply_fixture("openai", "chat_completion_text.json")

    async def calls(client: openai.AsyncOpenAI) -> list[str]:
        return [(await client.chat.completions.create(model="gpt-4o", messages=HELLO)).id for _ in range(3)]

    assert len(asyncio.run(serving(app, calls))) == 3


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "environ", "on"), [
    ({}, {}, None),
    ({}, {"OTEL_SERVICE_NAME": "gw"}, None),  # a name alone sends nothing anywhere
    ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({}, {"OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER"),
    ({}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({}, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"GAUD_TELEMETRY_ENDPOINT": "http://c:4318"}, {}, "telemetry.endpoint"),
    ({"GAUD_TELEMETRY_ENABLED": "false"}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
    ({"GAUD_TELEMETRY_ENABLED": "true"}, {}, "telemetry.enabled"),
])
def test_tracing_is_off_unless_configured(settings, environ, on):
    assert wanted(load_settings(environ=settings).get, environ) == on


def test_configured_without_opentelemetry_the_gateway_serves_and_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "engine.observability.otel", None)  # as if the extra were not installed
    settings = load_settings(environ={"GAUD_TELEMETRY_ENDPOINT": "http://c:4318"})
    with caplog.at_level("WARNING", logger="gaud.tracing"):
        assert load_tracing(settings.get, {}) is None
    assert "tracing is configured (telemetry.endpoint) but OpenTelemetry is not installed" in caplog.text
    assert "gaud-engine[otel]" in caplog.text


def test_with_tracing_off_opentelemetry_is_never_imported(tree, upstream, tmp_path):
    script = f"""
import sys
from engine.config import load_settings
from engine.spec.loader import load_catalog
from engine.web.server import create_app
app = create_app(load_catalog({str(tree)!r}), load_settings(environ={{"GAUD_DATABASE_URL": "sqlite:///{tmp_path}/x.db"}}))
assert app.app.state.services.pipeline.tracing is None
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_served_gateway_traces_with_the_standard_otel_variables(tree, upstream, tmp_path):
    """`gaud-engine serve` with only OTEL_* set: spans reach the collector under OTEL_SERVICE_NAME."""
    with Collector() as collector:
        collector.release.set()
        env = {"GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", **provider_env(upstream.url),
               "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "gw-env", "OTEL_BSP_SCHEDULE_DELAY": "1"}
        gateway = start_gateway(env, tmp_path / "gateway.log")
        try:
            upstream.reply_fixture("openai", "chat_completion_text.json")
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
            reply = client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"traceparent": TRACEPARENT})
            assert collector.arrived.wait(10), "no spans exported"
        finally:
            gateway.process.terminate()
            gateway.process.wait(20)
    assert "tracing requests with OpenTelemetry (turned on by OTEL_EXPORTER_OTLP_ENDPOINT)" in gateway.logs()
    assert {service for service, _ in collector.spans} == {"gw-env"}
    (server,) = [span for _, span in collector.spans if span.kind == span.SPAN_KIND_SERVER]
    assert server.trace_id.hex() == TRACE_ID and server.name == "chat gpt-4o"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["gen_ai.response.id"].string_value == reply.id
    sent = traceparent_span(upstream.last().headers["traceparent"])
    (client_span,) = [span for _, span in collector.spans if span.kind == span.SPAN_KIND_CLIENT]
    assert sent == (TRACE_ID, client_span.span_id.hex())
