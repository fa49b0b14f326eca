"""engine/streaming/chunks.py: neutral deltas -> OpenAI `chat.completion.chunk` events (`ChunkWriter`)
and -> one assistant message (`MessageAssembler`)."""

from __future__ import annotations

import json
import re

from engine.streaming import ChunkWriter, MessageAssembler, sse


def events(raw: bytes) -> list[dict | str]:
    """SSE bytes -> the JSON of each `data:` event ('[DONE]' kept as a string); every event must
    be exactly one `data:` line and a blank line."""
    assert raw.endswith(b"\n\n")
    out: list[dict | str] = []
    for event in raw[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ") and b"\n" not in event, event
        body = event[len(b"data: "):].decode()
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def deltas_of(raw: bytes) -> list[dict]:
    return [e["choices"][0]["delta"] for e in events(raw) if isinstance(e, dict) and e["choices"]]


def writer(**options) -> ChunkWriter:
    return ChunkWriter(model="gpt-4o", created=1700000000, **options)


def test_sse_writes_one_compact_data_event():
    assert sse({"a": [1, "é"]}) == 'data: {"a":[1,"é"]}\n\n'.encode()


def test_chunks_carry_the_envelope_and_the_first_has_the_role():
    w = writer()
    raw = w.write([("text", "Hel"), ("text", "lo")], upstream_id="chatcmpl-up", upstream_model="gpt-4o-2024-08-06")
    first, second = events(raw)
    assert first == {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000,
                     "model": "gpt-4o-2024-08-06",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                  "finish_reason": None, "logprobs": None}]}
    assert second["choices"][0]["delta"] == {"content": "lo"}
    assert second["id"] == "chatcmpl-up"


def test_the_id_and_model_are_fixed_by_the_first_write():
    w = writer()
    w.write([("text", "a")])
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", w.id or "")
    raw = w.write([("text", "b")], upstream_id="late-id", upstream_model="late-model")
    (chunk,) = events(raw)
    assert chunk["id"] == w.id and chunk["model"] == "gpt-4o"


def test_the_role_is_not_repeated_when_forwarded_chunks_carried_it():
    raw = writer(role_sent=True).write([("text", "a")])
    assert deltas_of(raw) == [{"content": "a"}]


def test_reasoning_and_tool_call_deltas():
    raw = writer().write([
        ("reasoning", "hmm"),
        ("tool_start", 0, "call_1", "get_weather"),
        ("tool_args", 0, '{"city":'),
        ("tool_start", 1, "call_2", "noop"),
        ("tool_args", 0, '"Paris"}'),
        ("unknown_kind", "ignored"),
    ])
    assert deltas_of(raw) == [
        {"role": "assistant", "reasoning_content": "hmm"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]


def test_nothing_to_write_writes_nothing():
    w = writer()
    assert w.write([]) == b""
    assert w.write([("text", "")]) == b""
    assert deltas_of(w.write([("text", "x")])) == [{"role": "assistant", "content": "x"}]  # the role still comes first


def test_special_tokens_are_filtered_across_writes_and_held_text_is_flushed_at_the_end():
    w = writer(special_tokens=("<|im_end|>",))
    out = w.write([("text", "Done.<|im_")]) + w.write([("text", "end|>")]) + w.write([("text", "<|")])
    out += w.finish("stop", None)
    texts = [d.get("content") for d in deltas_of(out)]
    assert texts == ["Done.", "<|", None]  # the last one is the finish chunk
    assert "im_end" not in out.decode()


def test_finish_writes_the_reason_then_usage_then_done():
    w = writer()
    w.write([("text", "a")], upstream_id="chatcmpl-x")
    out = events(w.finish("length", {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}))
    assert out[-1] == "[DONE]"
    finish, usage = out[0], out[1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}]
    assert usage == {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o",
                     "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    assert len(out) == 3


def test_finish_without_a_reason_or_usage_only_ends_the_stream():
    assert writer(role_sent=True).finish(None, None) == b"data: [DONE]\n\n"


def test_finish_of_an_empty_stream_still_has_an_id_and_the_role():
    w = writer()
    out = events(w.finish("stop", None, upstream_id="chatcmpl-e", upstream_model="m2"))
    assert out[0]["id"] == "chatcmpl-e" and out[0]["model"] == "m2"
    assert out[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert out[1] == "[DONE]"


def test_an_error_event_and_no_done():
    body = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    assert events(writer().error(body)) == [body]


# ----------------------------------------------------------------------- MessageAssembler
def test_deltas_assemble_into_one_message():
    assembler = MessageAssembler()
    assembler.add([("reasoning", "Let me "), ("text", "It is ")])
    assembler.add([("reasoning", "check."), ("text", "sunny."), ("tool_start", 0, "call_1", "get_weather"),
                   ("tool_args", 0, '{"city":'), ("tool_start", 1, "call_2", "noop"), ("tool_args", 0, '"Paris"}')])
    assert assembler.message() == {
        "role": "assistant", "content": "It is sunny.", "refusal": None, "reasoning_content": "Let me check.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}},
        ],
    }


def test_an_assembled_message_without_text_has_null_content():
    assert MessageAssembler().message() == {"role": "assistant", "content": None, "refusal": None}
    only_calls = MessageAssembler()
    only_calls.add([("tool_start", 0, "c", "f")])
    assert only_calls.message()["content"] is None


def test_special_tokens_are_stripped_from_the_assembled_text():
    assembler = MessageAssembler(("<|im_end|>", "</s>"))
    assembler.add([("text", "Hi<|im_"), ("text", "end|>")])
    assert assembler.message()["content"] == "Hi"
    only_token = MessageAssembler(("</s>",))
    only_token.add([("text", "</s>")])
    assert only_token.message()["content"] is None
