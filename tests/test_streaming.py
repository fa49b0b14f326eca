"""Streaming edge cases: splits at every byte, special tokens, mid-stream failures, disconnects."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.streaming import TokenFilter, make_framer

from .fakes import sse_frames
from .streams import assembled, assert_valid_chunks, raw_stream

HELLO = [{"role": "user", "content": "Hello"}]


def _openai_frame(content: str) -> bytes:
    chunk = {
        "id": "chatcmpl-split",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def test_sse_framer_handles_any_split_and_crlf():
    raw = b'event: a\r\ndata: {"t": "\xc3\xa9t\xc3\xa9"}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n'
    expected = [("a", '{"t": "été"}'), (None, "x\ny")]
    for cut in range(1, len(raw)):
        framer = make_framer("sse")
        frames = list(framer.feed(raw[:cut])) + list(framer.feed(raw[cut:])) + list(framer.close())
        assert frames == expected, cut


def test_ndjson_framer_handles_splits_and_missing_final_newline():
    raw = b'{"a": 1}\n\n{"b": "\xe2\x82\xac"}'
    for cut in range(1, len(raw)):
        framer = make_framer("ndjson")
        frames = list(framer.feed(raw[:cut])) + list(framer.feed(raw[cut:])) + list(framer.close())
        assert frames == [(None, '{"a": 1}'), (None, '{"b": "€"}')], cut


@pytest.mark.parametrize("pieces", [["<|im_", "end|>"], ["<", "|im_end", "|>"], ["ok<|im_end|>"], ["a<", "b"]])
def test_token_filter_removes_split_tokens(pieces):
    tokens = ("<|im_end|>", "</s>")
    filt = TokenFilter(tokens)
    out = "".join(filt.feed(p) for p in pieces) + filt.flush()
    assert out == "".join(pieces).replace("<|im_end|>", "")


def test_special_token_split_across_upstream_deltas(upstream, gateway):
    frames = [_openai_frame("Done."), _openai_frame("<|im_"), _openai_frame("end|>"), b"data: [DONE]\n\n"]
    upstream.reply(frames=frames, content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "copilot/gpt-4o", "messages": HELLO})
    assert done
    assert_valid_chunks(objects)
    assert assembled(objects)["content"] == "Done."


def test_special_token_from_recording_is_removed(upstream, gateway):
    upstream.reply_fixture("copilot", "stream_special_tokens.sse")
    objects, _ = raw_stream(gateway.url, {"model": "copilot/gpt-4o", "messages": HELLO})
    assert_valid_chunks(objects)
    assert "<|im_end|>" not in assembled(objects)["content"]
    # The Copilot `choices: []` preamble is dropped, never forwarded.
    assert all(o["object"] == "chat.completion.chunk" and o["choices"] for o in objects)


def test_split_utf8_and_sse_lines_byte_by_byte(upstream, gateway):
    text = "naïve café — 日本語"
    frames = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_split","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
        ('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + text + '"}}\n\n').encode(),
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    body = b"".join(frames)
    one_byte_frames = [body[i : i + 1] for i in range(len(body))]
    upstream.reply(frames=one_byte_frames, content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO})
    assert done
    assert_valid_chunks(objects)
    assert assembled(objects)["content"] == text
    assert assembled(objects)["finish_reason"] == "stop"


def _fixture(provider: str, name: str) -> bytes:
    from .fakes import PROVIDERS

    return (PROVIDERS / provider / "replies" / name).read_bytes()


def test_tool_arguments_accumulate_over_many_deltas(upstream, gateway):
    arguments = json.dumps({"harbour": "Saint-Malo", "days": list(range(40)), "note": "ünïcode"})
    head = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_args","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_x","name":"get_tide_table","input":{}}}\n\n',
    ]
    deltas = [
        ("event: content_block_delta\ndata: " + json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 3]}}) + "\n\n").encode()
        for i in range(0, len(arguments), 3)
    ]
    tail = [
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":50}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    upstream.reply(frames=head + deltas + tail, content_type="text/event-stream")
    objects, _ = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO})
    assert_valid_chunks(objects)
    result = assembled(objects)
    assert json.loads(result["tool_calls"][0]["arguments"]) == json.loads(arguments)
    assert result["tool_calls"][0]["id"] == "toolu_x"
    assert result["finish_reason"] == "tool_calls"


def test_error_event_mid_stream_ends_with_openai_error(upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_error_overloaded.sse")
    objects, done = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO})
    assert assembled([o for o in objects if "error" not in o])["content"] == "Starting to"
    error = objects[-1]["error"]
    assert error["type"] == "upstream_error" and error["code"] == "overloaded"
    assert set(error) == {"message", "type", "param", "code"}
    assert not done  # [DONE] would say the reply is whole


def test_connection_reset_mid_stream_ends_with_error_event(upstream, gateway):
    upstream.reply_fixture("anthropic", "stream_text.sse", reset_after=4)
    objects, _ = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": HELLO})
    assert objects[-1]["error"]["code"] == "connection"
    assert any(o.get("choices") for o in objects[:-1])


def test_error_before_first_byte_is_a_plain_http_error(upstream, gateway):
    frames = [b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n']
    upstream.reply(frames=frames, content_type="text/event-stream")
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"


def test_upstream_http_error_on_stream_request(upstream, gateway):
    upstream.reply_fixture("gemini", "error_429_resource_exhausted.json")
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "gemini-2.5-flash", "messages": HELLO, "stream": True}
    )
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_client_disconnect_cancels_upstream(upstream, gateway):
    frames = sse_frames(_fixture("anthropic", "stream_text.sse"))
    slow = frames[:3] + [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"tick "}}\n\n'
    ] * 200
    upstream.reply(frames=slow, content_type="text/event-stream", frame_delay=0.02)
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True},
        headers={"x-request-id": "trace-disconnect-1"},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the client goes away after the first chunk
    assert upstream.disconnected.wait(5), "the upstream request was not cancelled"
    # What was generated before the client left is billed: the prompt as reported by the
    # upstream's first event, the output (never reported: the stream was cut) estimated.
    line = _request_line(gateway, "trace-disconnect-1")
    assert line["status"] == 499
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0 and line["cost"] > 0


def _request_line(gateway, request_id: str) -> dict:
    logs = gateway.logs_with(request_id)
    return next(json.loads(raw) for raw in logs.splitlines() if raw.startswith("{") and request_id in raw and '"gaud.request"' in raw)


def test_a_stream_without_upstream_usage_is_billed_from_an_estimate(upstream, gateway):
    """An upstream that reports no usage must not make a stream free: usage is estimated from the
    prompt and the streamed text, marked `estimated`, and billed."""
    import openai

    upstream.reply_fixture("openai", "stream_text.sse")  # content only, no usage chunk
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-request-id": "trace-no-usage-1"},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage.completion_tokens == -(-len(text) // 4) and usage.prompt_tokens > 0
    assert usage.model_extra["estimated"] is True and usage.model_extra["cost"] > 0
    line = _request_line(gateway, "trace-no-usage-1")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert line["cost"] == pytest.approx(usage.model_extra["cost"])


def test_non_stream_request_served_from_a_streamed_upstream(upstream, tmp_path):
    """A spec may say its upstream only streams (`endpoints.chat.stream_only`): a non-stream
    request is then assembled from the stream into one chat.completion."""
    import asyncio
    import shutil

    from engine import load_catalog
    from engine.pipeline.gateway import Gateway
    from engine.pipeline.upstream import Upstream

    from .conftest import ROOT, provider_env
    from .oracles import oracle_check

    shutil.copytree(ROOT / "providers.d", tmp_path / "providers.d")
    (tmp_path / "providers.d" / "streamy.yaml").write_text(
        "extends: anthropic\n"
        "api:\n  endpoints:\n    chat: {stream_only: true}\n"
        "models:\n  claude-sonnet-4-20250514: {context_window: 200000, max_output_tokens: 64000, capabilities: [tools], free: true, reason: test model}\n"
    )
    catalog = load_catalog(tmp_path, environ=provider_env(upstream.url))
    assert catalog.providers["streamy"].endpoints["chat"].stream_only
    upstream.reply_fixture("anthropic", "stream_tool_use.sse")

    async def go():
        gateway = Gateway(catalog, Upstream())
        try:
            return await gateway.chat({"model": "streamy/claude-sonnet-4-20250514", "messages": HELLO})
        finally:
            await gateway.upstream.close()

    completion = asyncio.run(go()).completion
    oracle_check.assert_openai(completion, "CreateChatCompletionResponse")
    assert upstream.last().body["stream"] is True
    message = completion["choices"][0]["message"]
    assert message["content"] == "Checking both harbours."
    assert [json.loads(c["function"]["arguments"])["harbour"] for c in message["tool_calls"]] == ["Brest", "Saint-Malo"]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["prompt_tokens"] == 520 and completion["usage"]["completion_tokens"] == 88
