"""`stream.passthrough`: an upstream's OpenAI chunks are forwarded as they come, read only where
the gateway needs something (id, finish reason, usage), and the stream is still ended, billed and
estimated like an interpreted one."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.streaming import EventReader, StreamState
from engine.streaming.passthrough import Passthrough

from .conftest import checked_catalog, one_target
from .fakes import PROVIDERS, sse_frames
from .streams import assembled, assert_valid_chunks, raw_stream

HELLO = [{"role": "user", "content": "Hello"}]


def _reply(name: str) -> bytes:
    return (PROVIDERS / "openai" / "replies" / name).read_bytes()


def _chunk(choices: list[dict], **extra: object) -> bytes:
    body = {"id": "chatcmpl-pt", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o-2024-08-06",
            "system_fingerprint": "fp_pt", "choices": choices, **extra}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def _delta(content: str, index: int = 0, finish: str | None = None) -> dict:
    return {"index": index, "delta": {"content": content} if content else {}, "logprobs": None, "finish_reason": finish}


@pytest.fixture(scope="module")
def openai_spec():
    return one_target(checked_catalog({"OPENAI_API_KEY": "sk-test"}), "openai/gpt-4o").provider


def _forward(spec, pieces: list[bytes]) -> tuple[bytes, StreamState, Passthrough]:
    state = StreamState()
    reader = spec.stream.reader(state, special_tokens=spec.special_tokens)
    assert isinstance(reader, Passthrough)
    out = b"".join(reader.feed(piece) for piece in pieces) + reader.close()
    return out, state, reader


def test_frames_are_forwarded_verbatim_whatever_the_read_sizes(openai_spec):
    raw = _reply("stream_include_usage.sse")
    whole, state, _ = _forward(openai_spec, [raw])
    frames = sse_frames(raw)
    # Everything but the usage-only chunk and [DONE] goes out byte for byte.
    assert whole == b"".join(f for f in frames if b'"choices":[]' not in f and b"[DONE]" not in f)
    assert state.done and state.raw_finish == "stop" and state.raw_usage["prompt_tokens"] == 19
    assert (state.id, state.model) == ("chatcmpl-GaudStream0007", "gpt-4.1-2025-04-14")
    for cut in range(1, len(raw), 7):
        split, split_state, _ = _forward(openai_spec, [raw[:cut], raw[cut:]])
        assert split == whole, cut
        assert split_state.raw_usage == state.raw_usage and split_state.raw_finish == "stop", cut


def test_crlf_frames_are_forwarded_with_lf_endings(openai_spec):
    raw = _reply("stream_text.sse")
    lf, _, _ = _forward(openai_spec, [raw])
    crlf = raw.replace(b"\n", b"\r\n")
    for cut in range(1, len(crlf), 11):
        out, state, _ = _forward(openai_spec, [crlf[:cut], crlf[cut:]])
        assert out == lf, cut
        assert state.done, cut


def test_generated_characters_are_estimated_without_reading_every_frame(openai_spec):
    texts = ["Sea", " otters", " hold", " hands", " while", " they", " sleep \"safely\"."]
    raw = _chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    raw += b"".join(_chunk([_delta(t)]) for t in texts) + _chunk([_delta("", finish="stop")]) + b"data: [DONE]\n\n"
    _, state, reader = _forward(openai_spec, [raw])
    assert reader.output_chars == len("".join(texts))
    assert state.frames == len(texts) + 3  # with the role, finish and done frames, as when interpreted


def test_specs_that_translate_or_filter_are_interpreted():
    catalog = checked_catalog({"OPENAI_API_KEY": "k", "GROQ_API_KEY": "k", "COPILOT_API_TOKEN": "k"})
    groq = one_target(catalog, "groq/llama-3.3-70b-versatile").provider
    assert groq.stream.passthrough is None  # `passthrough: null` drops what it extends
    assert isinstance(groq.stream.reader(StreamState()), EventReader)
    openai = one_target(catalog, "openai/gpt-4o").provider
    assert isinstance(openai.stream.reader(StreamState(), special_tokens=("</s>",)), EventReader)


def test_gateway_forwards_and_ends_the_stream_itself(upstream, gateway):
    frames = sse_frames(_reply("stream_include_usage.sse"))
    upstream.reply(frames=frames, content_type="text/event-stream")
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20,
                      json={"model": "gpt-4o", "messages": HELLO, "stream": True}) as response:
        body = response.read()
    assert response.status_code == 200
    # The upstream's chunks arrive unchanged; its usage chunk (the gateway asked for it, the client
    # did not) is held back, and the stream ends with exactly one [DONE].
    for frame in frames:
        if b'"choices":[]' in frame:
            assert frame not in body
        elif b"[DONE]" not in frame:
            assert frame in body
    assert b'"usage":{' not in body
    assert body.count(b"data: [DONE]") == 1 and body.endswith(b"data: [DONE]\n\n")


def test_usage_chunk_with_cost_when_the_client_asks(upstream, gateway):
    upstream.reply(frames=sse_frames(_reply("stream_include_usage.sse")), content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "gpt-4o", "messages": HELLO,
                                             "stream_options": {"include_usage": True}})
    assert done
    assert_valid_chunks(objects)
    usage = objects[-1]["usage"]
    assert objects[-1]["choices"] == []
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (19, 6) and usage["cost"] > 0
    assert "estimated" not in usage
    assert sum(1 for o in objects if o.get("usage")) == 1  # the upstream's own usage chunk is not also sent


def test_a_stream_cut_before_its_finish_chunk_ends_with_an_error(upstream, gateway):
    frames = [_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
              _chunk([_delta("Half a")]), _chunk([_delta(" sentence")])]
    upstream.reply(frames=frames, content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "gpt-4o", "messages": HELLO})
    assert not done  # no [DONE]: the reply was cut short
    assert_valid_chunks(objects)
    result = assembled([o for o in objects if "error" not in o])
    assert result["content"] == "Half a sentence" and result["finish_reason"] is None
    assert objects[-1]["error"]["code"] == "incomplete_stream"


def test_several_choices_pass_through(upstream, gateway):
    frames = [_chunk([_delta("A", 0), _delta("B", 1)]), _chunk([_delta("a", 0), _delta("b", 1)]),
              _chunk([_delta("", 0, "stop"), _delta("", 1, "stop")]), b"data: [DONE]\n\n"]
    upstream.reply(frames=frames, content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "gpt-4o", "messages": HELLO, "n": 2})
    assert done
    texts = {0: "", 1: ""}
    for obj in objects:
        for choice in obj["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "Aa", 1: "Bb"}
    finishes = [c["finish_reason"] for o in objects for c in o["choices"] if c["finish_reason"]]
    assert finishes == ["stop", "stop"]  # the upstream's finish chunk, no second one from the gateway


def test_an_error_frame_mid_stream_ends_it_and_is_recorded(upstream, gateway):
    error = {"error": {"message": "The server had an error while processing your request.", "type": "server_error",
                       "param": None, "code": None}}
    frames = [_chunk([_delta("Half a")]), b"data: " + json.dumps(error).encode() + b"\n\n", _chunk([_delta(" lost")])]
    # In one write, so that one upstream read holds the text before the error and the error.
    upstream.reply(frames=[b"".join(frames)], content_type="text/event-stream")
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20, headers={"x-request-id": "trace-pt-error"},
                      json={"model": "gpt-4o", "messages": HELLO, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    objects = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    assert assembled([o for o in objects if "error" not in o])["content"] == "Half a"
    assert set(objects[-1]["error"]) == {"message", "type", "param", "code"}
    assert "data: [DONE]" not in lines
    logged = gateway.logs_with("trace-pt-error")
    line = next(json.loads(raw) for raw in logged.splitlines() if "trace-pt-error" in raw and '"gaud.request"' in raw)
    assert line["error_kind"] is not None


def test_compact_json_with_quoted_colons_in_text_is_still_read_for_finish_and_usage(openai_spec):
    """The mark style (compact or spaced JSON) is taken from the first frame's first key, not
    from text that merely contains `": `."""
    first = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"a\\": b"},"finish_reason":null}]}\n\n'
    last = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    out, state, _ = _forward(openai_spec, [first, last, usage, b"data: [DONE]\n\n"])
    assert state.raw_finish == "stop" and state.raw_usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert out == first + last


def test_frames_before_an_error_frame_arrive_whole_at_any_split(openai_spec):
    from engine.streaming import StreamFailure

    text = _chunk([_delta("Half a")])
    raw = _chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]) + text
    raw += b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n' + _chunk([_delta(" lost")])
    for cut in range(1, len(raw)):
        state = StreamState()
        reader = openai_spec.stream.reader(state)
        out = b""
        with pytest.raises(StreamFailure) as failure:
            for piece in (raw[:cut], raw[cut:]):
                out += reader.feed(piece)
        out += failure.value.partial
        assert out == raw[: raw.index(b'data: {"error"')], cut  # every frame before it, blank lines included
