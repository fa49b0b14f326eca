"""Stream encoders (engine/streaming/encoders.py): the protocol, the OpenAI encoder's error from the
GatewayError itself, and the gateway feeding an encoder objects, the end or the error."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from engine.errors import GatewayError, RateLimited
from engine.pipeline.gateway import Exchange, Gateway
from engine.pipeline.upstream import Upstream
from engine.spec.ingress import compile_ingress
from engine.spec.loader import Catalog
from engine.streaming import ChunkWriter
from engine.streaming.encoders import EncoderFactory, StreamEncoder, stream_identity
from engine.streaming.events import Delta

from ..fakes import FakeUpstream
from .test_blocks import DEMO, events

HELLO = [{"role": "user", "content": "Hello"}]
DEMO_SPEC = compile_ingress("demo", "a test format", DEMO)


def test_chunk_writer_renders_the_gateway_error_itself() -> None:
    error = RateLimited("slow down")
    # No [DONE] after it: a client that reads no error events must not take the reply as whole.
    assert ChunkWriter(model="m", created=7).error(error) == b"data: " + orjson.dumps(error.to_openai()) + b"\n\n"


def test_stream_identity() -> None:
    assert stream_identity("up-id", "up-model", "m") == ("up-id", "up-model")
    made, model = stream_identity(None, None, "m")
    assert made.startswith("chatcmpl-") and len(made) == 41 and model == "m"


# -- the gateway drives an encoder -------------------------------------------------------------------
class Recording:
    """A StreamEncoder that keeps what it was given."""

    def __init__(self, *, model: str, created: int, special_tokens: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, Any]] = []
        RECORDED.append(self)

    def write(self, deltas: list[Delta], upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        self.calls.append(("write", list(deltas)))
        return b"w"

    def finish(self, finish_reason: str | None, usage: dict[str, Any] | None,
               upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        self.calls.append(("finish", (finish_reason, usage)))
        return b"f"

    def error(self, exc: GatewayError) -> bytes:
        self.calls.append(("error", exc))
        return b"e"


RECORDED: list[Recording] = []


def test_the_writers_are_encoder_factories() -> None:
    factories: list[EncoderFactory] = [ChunkWriter, DEMO_SPEC.stream_encoder(1, None), Recording]  # checked by mypy
    for factory in factories:
        encoder: StreamEncoder = factory(model="m", created=1, special_tokens=())
        assert isinstance(encoder.write([("text", "hi")], "id"), bytes)
        assert isinstance(encoder.finish("stop", None), bytes)


def stream(catalog: Catalog, body: dict[str, Any], encoder: Any) -> tuple[bytes, Exchange]:
    gateway = Gateway(catalog, Upstream())
    exchange = Exchange()

    async def go() -> bytes:
        try:
            result = await gateway.chat_stream(body, exchange, encoder=encoder)
            return b"".join([piece async for piece in result.body])
        finally:
            await gateway.upstream.close()

    return asyncio.run(go()), exchange


def test_the_gateway_feeds_objects_and_the_end(catalog: Catalog, upstream: FakeUpstream) -> None:
    RECORDED.clear()
    upstream.reply_fixture("openai", "stream_text.sse")  # a passthrough upstream: read, not forwarded
    body = {"model": "openai/gpt-4o", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    raw, exchange = stream(catalog, body, Recording)
    _: StreamEncoder = RECORDED[0]
    calls = RECORDED[0].calls
    assert raw == b"w" * (len(calls) - 1) + b"f"
    assert all(kind == "write" and all(isinstance(d, tuple) for d in arg) for kind, arg in calls[:-1])
    kind, (finish, usage) = calls[-1]
    assert kind == "finish" and finish == "stop" and usage == exchange.usage and usage["total_tokens"] > 0


def test_mid_stream_failure_reaches_the_encoder_as_the_error(catalog: Catalog, upstream: FakeUpstream) -> None:
    upstream.reply_fixture("anthropic", "stream_error_overloaded.sse")
    body = {"model": "anthropic/claude-sonnet-4-20250514", "messages": HELLO, "stream": True}
    raw, exchange = stream(catalog, body, DEMO_SPEC.stream_encoder(4, {}))
    named = events(raw)
    assert named[0][0] == "begin" and ("text", {"type": "text", "index": 0, "text": named[2][1]["text"]}) == named[2]
    assert exchange.error is not None
    assert named[-1] == ("error", DEMO_SPEC.error_body(exchange.error)[1])
    assert "end" not in [name for name, _ in named]
    assert exchange.error is not None and exchange.error.kind == "overloaded"
    assert exchange.usage is not None  # what was generated before the failure is still accounted
