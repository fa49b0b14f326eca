"""A streamed request to an upstream that cannot stream: refused with a 400 before any upstream
call when its spec has no `stream` section (and skipped for a candidate that can), or emulated
(`stream: {emulate: true}` in the spec, `stream: emulate` on a route's candidate): one
non-streaming call whose whole reply reaches the client as a well-formed stream, billed and
audited as a real stream. End to end: a served gateway, the openai SDK, a fake upstream."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from engine.streaming import ChunkWriter, MessageAssembler, message_deltas

from .conftest import ROOT, RunningGateway, audit_rows, provider_env, spec_tree, start_gateway
from .fakes import PROVIDERS

HELLO = [{"role": "user", "content": "Hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_tide_table", "parameters": {"type": "object"}}}]
#: The models of the two test providers (plain: the OpenAI spec without its `stream` section).
MODELS = "models:\n  {}: {{context_window: 8000, max_output_tokens: 1000, capabilities: [tools]}}\n"


def plain_spec() -> str:
    spec = yaml.safe_load((ROOT / "providers.d" / "openai.yaml").read_text())
    del spec["stream"]
    spec.pop("models", None)
    spec.pop("catalog", None)
    spec["description"] = "an upstream that cannot stream"
    return yaml.safe_dump(spec, sort_keys=False) + MODELS.format("plain-1")


#: The same upstream, saying so: streamed requests are emulated.
EMU = """\
extends: openai
description: an upstream that cannot stream, emulated
stream: {emulate: true}
""" + MODELS.format("emu-1")
PRICES = """\
description: test prices
models:
  plain/plain-1: {input: 1.0, output: 2.0, source: https://example.test/prices, as_of: "2026-01-01"}
  emu/emu-1: {input: 1.0, output: 2.0, source: https://example.test/prices, as_of: "2026-01-01"}
"""
ALIASES = {
    "mixed": {"candidates": [{"provider": "plain", "model": "plain-1"}, {"provider": "openai", "model": "gpt-4o"}]},
    "neither": {"candidates": [{"provider": "plain", "model": "plain-1"}]},
    "routed": {"candidates": [{"provider": "openai", "model": "gpt-4o", "stream": "emulate"}]},
}


@pytest.fixture
def served(upstream: Any, tmp_path: Path) -> Iterator[RunningGateway]:
    tree = spec_tree(tmp_path, retry="false", fallback="false")
    (tree / "providers.d" / "plain.yaml").write_text(plain_spec())
    (tree / "providers.d" / "emu.yaml").write_text(EMU)
    (tree / "pricing.d" / "test.yaml").write_text(PRICES)
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"].update(ALIASES)
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    env = {**provider_env(upstream.url), "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        yield gw
    finally:
        gw.process.send_signal(signal.SIGTERM)  # flushes the audit log
        gw.process.wait(20)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=20)


def reply(name: str) -> dict[str, Any]:
    return json.loads((PROVIDERS / "openai" / "replies" / name).read_text())  # type: ignore[no-any-return]


def test_emulated_stream_of_text_and_tool_calls_with_usage(served, upstream, tmp_path):
    api = client(served)
    upstream.reply(json=reply("chat_completion_text.json"))
    chunks = list(api.chat.completions.create(
        model="emu/emu-1", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert upstream.last().body.get("stream") is not True  # one non-streaming upstream call
    assert "stream_options" not in upstream.last().body
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sea otters hold hands while sleeping so they don't drift apart."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id == "chatcmpl-GaudText0001"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (19, 14, 33)
    assert usage.model_extra["cost"] == pytest.approx((19 * 1.0 + 14 * 2.0) / 1e6)

    upstream.reply(json=reply("chat_completion_tool_calls_parallel.json"))
    chunks = list(api.chat.completions.create(model="emu/emu-1", messages=HELLO, tools=TOOLS, stream=True))
    assert all(c.usage is None for c in chunks)  # not asked for
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or ():
            got = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            got["id"] += call.id or ""
            got["name"] += call.function.name or ""
            got["arguments"] += call.function.arguments or ""
    assert calls == {
        0: {"id": "call_GaudHarbourA0000000001", "name": "get_tide_table",
            "arguments": '{"harbour": "Brest", "day": "2026-03-14"}'},
        1: {"id": "call_GaudHarbourB0000000002", "name": "get_tide_table",
            "arguments": '{"harbour": "Saint-Malo", "day": "2026-03-14"}'},
    }
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # A failure before the reply is an ordinary JSON error: nothing was streamed yet.
    upstream.reply_fixture("openai", "error_429_rate_limit.json")
    with pytest.raises(openai.RateLimitError) as limited:
        list(api.chat.completions.create(model="emu/emu-1", messages=HELLO, stream=True))
    assert limited.value.response.headers["content-type"].startswith("application/json")
    assert limited.value.response.json()["error"]["code"] == "rate_limit_exceeded"

    served.process.send_signal(signal.SIGTERM)
    served.process.wait(20)
    rows = audit_rows(tmp_path)
    assert [(r["status"], r["stream"], r["deployment"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (200, True, "emu/emu-1", 19, 14), (200, True, "emu/emu-1", 120, 58), (429, True, "emu/emu-1", 0, 0)]
    assert rows[0]["cost"] == pytest.approx((19 + 28) / 1e6)
    assert rows[0]["ttft_ms"] is not None and rows[0]["ttft_ms"] <= rows[0]["latency_ms"]
    assert rows[2]["error_kind"] == "rate_limit" and rows[2]["ttft_ms"] is None


def test_a_spec_without_stream_refuses_a_streamed_request_before_calling(served, upstream, tmp_path):
    api = client(served)
    for model in ("plain/plain-1", "neither"):
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(model=model, messages=HELLO, stream=True)
        error = refused.value.response.json()["error"]
        assert (error["param"], error["code"], error["type"]) == ("stream", "stream_unsupported", "invalid_request_error")
        assert error["message"].startswith("plain/plain-1 cannot stream: the plain spec has no `stream` section")
    assert upstream.requests == []

    upstream.reply(json=reply("chat_completion_text.json"))  # not streamed, it is served as ever
    assert api.chat.completions.create(model="plain/plain-1", messages=HELLO).choices[0].message.content

    served.process.send_signal(signal.SIGTERM)
    served.process.wait(20)
    rows = audit_rows(tmp_path)
    assert [(r["status"], r["error_kind"], r["attempts"]) for r in rows] == [
        (400, "invalid_request", 0), (400, "invalid_request", 0), (200, None, 1)]


def test_a_candidate_that_cannot_stream_is_skipped_for_one_that_can(served, upstream):
    upstream.reply_fixture("openai", "stream_include_usage.sse", content_type="text/event-stream")
    raw = client(served).chat.completions.with_raw_response.create(model="mixed", messages=HELLO, stream=True)
    assert raw.headers["x-gaud-deployment"] == "openai/gpt-4o" and raw.headers["x-gaud-attempts"] == "1"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert [r.body.get("stream") for r in upstream.requests] == [True]  # plain was never called


def test_a_route_candidate_can_ask_for_emulation(served, upstream):
    upstream.reply(json=reply("chat_completion_text.json"))
    raw = client(served).chat.completions.with_raw_response.create(model="routed", messages=HELLO, stream=True)
    assert raw.headers["x-gaud-deployment"] == "openai/gpt-4o"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Sea otters")
    assert upstream.last().body.get("stream") is not True


@pytest.mark.parametrize("message", [
    {"role": "assistant", "content": "hi", "refusal": None},
    {"role": "assistant", "content": None, "refusal": None, "reasoning_content": "think",
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
])
def test_message_deltas_round_trip_through_the_assembler(message):
    assembler = MessageAssembler()
    assembler.add(message_deltas(message))
    assert assembler.message() == message
    # and the writer turns them into chunks without complaint
    assert ChunkWriter(model="m", created=1).write(message_deltas(message)).count(b"data: ") >= 1
