"""The block stream encoder (engine/streaming/blocks.py): canonical deltas in, a client format's
exact events out, as the format's `stream` section says; errors rendered from the GatewayError."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from engine.errors import (
    BudgetExceeded,
    GatewayError,
    NotFound,
    Overloaded,
    RateLimited,
    Upstream5xx,
    UpstreamTimeout,
)
from engine.mapping import encode_carry
from engine.spec.ingress import IngressSpec, compile_ingress
from engine.streaming.blocks import BlockStreamWriter
from engine.streaming.events import Delta

#: A made-up client format: one event per block step, named by the payload's /type.
DEMO: dict[str, Any] = {
    "routes": {"chat": "/v1/demo"},
    "request": {"map": [{"to": "/model", "from": "/model"}]},
    "response": {
        "map": [
            {"to": "/id", "from": "/id"},
            {"to": "/stop", "from": "@stop_reason"},
            {"to": "/text", "from": "/choices/0/message/content"},
            {"to": "/usage", "from": "/usage"},
        ],
        "finish_reasons": {"stop": "done", "tool_calls": "tools", "_default": "other"},
    },
    "errors": {
        "envelope": {"kind": "@type", "text": "@message"},
        "types": {"rate_limit": "slow_down", "not_found": "missing", "overloaded": "busy", "_default": "failed"},
    },
    "stream": {
        "start": [{"event": "begin", "data": {"id": "@id", "model": "@model", "seq": "@seq", "prompt": "@estimated_tokens",
                                               "user": "@request/user"}}],
        "blocks": {
            "reasoning": {
                "start": {"type": "think_start", "index": "@index"},
                "delta": {"type": "think", "index": "@index", "text": "@text"},
                "finish": {"when": {"has": "@carry/sig"}, "data": {"type": "sig", "index": "@index", "sig": "@carry/sig"}},
                "stop": {"type": "think_stop", "index": "@index"},
            },
            "text": {
                "start": {"type": "text_start", "index": "@index"},
                "delta": {"type": "text", "index": "@index", "text": "@text"},
                "stop": {"type": "text_stop", "index": "@index", "all": "@accumulated"},
            },
            "tool_call": {
                "start": {"type": "call_start", "index": "@index", "id": "@id", "name": "@name"},
                "delta": {"type": "args", "index": "@index", "text": "@text"},
                "stop": [{"type": "call_stop", "index": "@index", "args": "@accumulated"}],
            },
        },
        "carry": {"sep": "~", "to_reasoning": ["sig"]},
        "end": [{"event": "end", "data": {"stop": "@stop_reason", "usage": "@usage", "reply": "@reply/text", "seq": "@seq"}}],
        "error": {"event": "error", "data": "@error"},
    },
}


@pytest.fixture(scope="module")
def demo() -> IngressSpec:
    return compile_ingress("demo", "a test format", DEMO)


def writer(spec: IngressSpec, tokens: tuple[str, ...] = ()) -> BlockStreamWriter:
    encoder = spec.stream_encoder(12, {"user": "u1"})(model="default-model", created=5, special_tokens=tokens)
    assert isinstance(encoder, BlockStreamWriter)
    return encoder


def events(raw: bytes) -> list[tuple[str | None, Any]]:
    """SSE bytes -> (event name, JSON payload) pairs (only to state expectations readably)."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines.get("event"), json.loads(lines["data"])))
    return out


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoders write from objects: parsing a canonical frame back (as the old writer did, with
    orjson) while encoding is a failure. (Fields carried in a call id are JSON of their own.)"""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an encoder parsed JSON")

    monkeypatch.setattr(orjson, "loads", refuse)


def test_text_stream(demo: IngressSpec, no_parsing: None) -> None:
    w = writer(demo)
    out = w.write([("text", "Hel"), ("text", "lo")], "id-1", None)
    out += w.finish("stop", {"prompt_tokens": 2, "completion_tokens": 1})
    assert events(out) == [
        ("begin", {"id": "id-1", "model": "default-model", "seq": 0, "prompt": 12, "user": "u1"}),
        ("text_start", {"type": "text_start", "index": 0}),
        ("text", {"type": "text", "index": 0, "text": "Hel"}),
        ("text", {"type": "text", "index": 0, "text": "lo"}),
        ("text_stop", {"type": "text_stop", "index": 0, "all": "Hello"}),
        ("end", {"stop": "done", "usage": {"prompt_tokens": 2, "completion_tokens": 1}, "reply": "Hello", "seq": 5}),
    ]
    assert out.startswith(b'event: begin\ndata: {"id":"id-1","model":"default-model","seq":0,')


def test_reasoning_then_tool_calls_with_a_carried_signature(demo: IngressSpec, no_parsing: None) -> None:
    w = writer(demo)
    deltas: list[Delta] = [
        ("reasoning", "think"),
        ("tool_start", 0, encode_carry("call_a", {"sig": "S1"}, "~"), "lookup"),
        ("tool_args", 0, '{"q":'),
        ("tool_args", 0, '"x"}'),
        ("tool_start", 1, "call_b", "other"),
    ]
    out = w.write(deltas, "id-2", "up-model") + w.finish("tool_calls", None)
    assert events(out) == [
        ("begin", {"id": "id-2", "model": "up-model", "seq": 0, "prompt": 12, "user": "u1"}),
        ("think_start", {"type": "think_start", "index": 0}),
        ("think", {"type": "think", "index": 0, "text": "think"}),
        ("sig", {"type": "sig", "index": 0, "sig": "S1"}),  # the carried field closes the block before the call
        ("think_stop", {"type": "think_stop", "index": 0}),
        ("call_start", {"type": "call_start", "index": 1, "id": "call_a", "name": "lookup"}),
        ("args", {"type": "args", "index": 1, "text": '{"q":'}),
        ("args", {"type": "args", "index": 1, "text": '"x"}'}),
        ("call_stop", {"type": "call_stop", "index": 1, "args": '{"q":"x"}'}),
        ("call_start", {"type": "call_start", "index": 2, "id": "call_b", "name": "other"}),
        ("call_stop", {"type": "call_stop", "index": 2, "args": ""}),
        ("end", {"stop": "tools", "usage": {}, "seq": 11}),
    ]


def test_special_tokens_are_filtered_and_held_text_ends_the_stream(demo: IngressSpec) -> None:
    w = writer(demo, tokens=("<|end|>",))
    assert w.write([("text", "<|e")], "id-3", None) == b""  # held back: nothing sent, not even the start
    assert not w.started
    out = w.write([("text", "nd|>ok<")]) + w.finish("stop", None)
    texts = [payload["text"] for name, payload in events(out) if name == "text"]
    assert texts == ["ok", "<"]
    assert events(out)[-1] == ("end", {"stop": "done", "usage": {}, "reply": "ok<", "seq": 5})


def test_an_empty_stream_still_starts_and_ends(demo: IngressSpec) -> None:
    w = writer(demo)
    assert [name for name, _ in events(w.finish("stop", None, "id-4"))] == ["begin", "end"]
    assert events(writer(demo).finish(None, None, "id-5")) == []  # nothing said at all: nothing to end


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RateLimited("slow"), "slow_down"),
        (NotFound("gone"), "missing"),
        (Overloaded("busy now"), "busy"),
        (UpstreamTimeout("late"), "failed"),
        (Upstream5xx("boom"), "failed"),
        (BudgetExceeded("spent"), "failed"),
    ],
)
def test_error_after_content_in_the_client_envelope(demo: IngressSpec, no_parsing: None, error: GatewayError,
                                                    kind: str) -> None:
    w = writer(demo)
    w.write([("text", "partial")], "id-6", None)
    out = events(w.error(error))
    assert out == [
        ("text_stop", {"type": "text_stop", "index": 0, "all": "partial"}),
        ("error", {"kind": kind, "text": error.message}),
    ]
    assert out[-1][1] == demo.error_body(error)[1]  # the same envelope a non-stream error reply has
    assert not w.started  # nothing (no end events) after the error


def test_each_attempt_gets_a_fresh_encoder(demo: IngressSpec) -> None:
    factory = demo.stream_encoder(3, None)
    first, second = factory(model="m", created=1), factory(model="m", created=1)
    assert isinstance(first, BlockStreamWriter) and isinstance(second, BlockStreamWriter)
    first.write([("text", "a")], "x", None)
    assert first is not second and first.started and not second.started


