"""engine/streaming/events.py: the stream event table, compiled from a spec's `stream:` section
(`compile_stream`) and fed frames (`StreamSpec.handle`) or bytes (`EventReader`)."""

from __future__ import annotations

import itertools
import json

import pytest

from engine.mapping import split_call_id
from engine.streaming import (
    EventReader,
    StreamFailure,
    StreamSpec,
    StreamState,
    compile_stream,
)
from engine.streaming.events import delta_chars


def numbered_state() -> StreamState:
    numbers = itertools.count(1)
    return StreamState(new_call_id=lambda prefix: f"{prefix}{next(numbers)}")


def sse(event: str | None, data: dict | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {body}\n\n".encode()


# The event table of providers.d/anthropic.yaml.
ANTHROPIC = {
    "framing": "sse",
    "key": "event",
    "events": {
        "message_start": [{"meta": {"id": "/message/id", "model": "/message/model"}}, {"usage": "/message/usage"}],
        "content_block_start": [{"switch": {"by": "/content_block/type", "cases": {
            "tool_use": [{"tool_start": {"key": "/index", "id": "/content_block/id", "name": "/content_block/name",
                                         "content_tool": "json_output",
                                         "carry": {"thinking": "@state/reasoning", "signature": "@state/signature"}}}],
            "text": [{"text": "/content_block/text"}],
            "thinking": [{"reasoning": "/content_block/thinking"}],
            "_default": ["ignore"],
        }}}],
        "content_block_delta": [{"switch": {"by": "/delta/type", "cases": {
            "text_delta": [{"text": "/delta/text"}],
            "thinking_delta": [{"reasoning": "/delta/thinking"}],
            "signature_delta": [{"set": {"signature": "/delta/signature"}}],
            "input_json_delta": [{"tool_args": {"key": "/index", "from": "/delta/partial_json"}}],
            "_default": ["ignore"],
        }}}],
        "message_delta": [{"usage": "/usage"}, {"finish": "/delta/stop_reason"}],
        "error": [{"raise": {}}],
        "message_stop": ["done"],
        "_default": ["ignore"],
    },
}

# The event table of providers.d/openai.yaml (without passthrough).
OPENAI = {
    "key": "none",
    "done_data": "[DONE]",
    "events": {"_default": [
        {"raise": {"message": "/error/message", "when": {"has": "/error"}}},
        {"meta": {"id": "/id", "model": "/model"}},
        {"each": {"in": "/choices/0/delta/tool_calls", "cases": {"_default": [
            {"tool_start": {"key": "/index", "id": "/id", "name": "/function/name", "when": {"has": "/function/name"}}},
            {"tool_args": {"key": "/index", "from": "/function/arguments"}},
        ]}}},
        {"reasoning": "/choices/0/delta/reasoning_content"},
        {"text": "/choices/0/delta/content"},
        {"usage": "/usage"},
        {"finish": "/choices/0/finish_reason"},
    ]},
}


def openai_chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {"id": "chatcmpl-1", "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra}


# ------------------------------------------------------------------------ a whole stream
ANTHROPIC_STREAM = b"".join([
    sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude-sonnet-4",
                                                                "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    sse("ping", {"type": "ping"}),
    sse("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Need the "}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "weather."}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig=="}}),
    sse("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Checking."}}),
    sse("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                              "name": "get_weather", "input": {}}}),
    sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
    sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
    sse("content_block_start", {"index": 3, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "noop"}}),
    sse("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}),
    sse("message_stop", {"type": "message_stop"}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "after the end"}}),
])


def read_all(spec: dict, raw: bytes, pieces: int = 1, state: StreamState | None = None):
    state = state or numbered_state()
    reader = compile_stream(spec).reader(state)
    size = max(1, len(raw) // pieces)
    deltas = []
    for start in range(0, len(raw), size):  # as the gateway reads: stop at the end of the stream
        deltas.extend(reader.feed(raw[start:start + size]))
        if state.done:
            return deltas, state, reader
    deltas.extend(reader.close())
    return deltas, state, reader


def test_an_anthropic_stream_becomes_neutral_deltas():
    deltas, state, reader = read_all(ANTHROPIC, ANTHROPIC_STREAM)
    carried = deltas[3][2]
    assert deltas == [
        ("reasoning", "Need the "),
        ("reasoning", "weather."),
        ("text", "Checking."),
        ("tool_start", 0, carried, "get_weather"),
        ("tool_args", 0, '{"city": '),
        ("tool_args", 0, '"Paris"}'),
        ("tool_start", 1, "toolu_2", "noop"),  # the reasoning went with the first call
    ]
    assert split_call_id(carried, "~") == ("toolu_1", {"thinking": "Need the weather.", "signature": "sig=="})
    assert (state.id, state.model) == ("msg_1", "claude-sonnet-4")
    assert state.raw_usage == {"input_tokens": 12, "output_tokens": 40}  # merged, later counts win
    assert state.raw_finish == "tool_use"
    assert state.done and state.has_tool_calls
    assert state.tool_index == {2: 0, 3: 1}
    assert reader.output_chars == delta_chars(deltas) == len("Need the weather.Checking.get_weather") + 17 + 4


def test_the_same_deltas_come_out_at_any_read_size():
    whole, _, _ = read_all(ANTHROPIC, ANTHROPIC_STREAM)
    for pieces in (2, 7, 50, len(ANTHROPIC_STREAM)):
        deltas, state, _ = read_all(ANTHROPIC, ANTHROPIC_STREAM, pieces)
        assert deltas == whole, pieces
        assert state.done


def test_an_openai_stream_with_tool_calls():
    raw = b"".join([
        sse(None, openai_chunk({"role": "assistant", "content": ""})),
        sse(None, openai_chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]})),
        sse(None, openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]})),
        sse(None, openai_chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]})),
        sse(None, openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]})),
        sse(None, openai_chunk({}, "tool_calls")),
        sse(None, {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        b"data: [DONE]\n\n",
    ])
    deltas, state, _ = read_all(OPENAI, raw)
    assert deltas == [
        ("tool_start", 0, "call_a", "f"),
        ("tool_args", 0, '{"x"'),
        ("tool_start", 1, "call_b", "g"),
        ("tool_args", 1, "{}"),
        ("tool_args", 0, ":1}"),
    ]
    assert state.raw_finish == "tool_calls" and state.raw_usage == {"prompt_tokens": 5, "completion_tokens": 9}
    assert state.done and state.frames == 8


# --------------------------------------------------------------------------- frame by frame
def handle(spec: dict, data: dict | str, event: str | None = None, state: StreamState | None = None):
    state = state if state is not None else numbered_state()
    return compile_stream(spec).handle(event, data if isinstance(data, str) else json.dumps(data), state), state


def test_done_data_ends_the_stream_without_being_parsed():
    deltas, state = handle(OPENAI, " [DONE] ")
    assert deltas == [] and state.done


def test_a_frame_that_is_not_json_is_a_parsing_failure():
    with pytest.raises(StreamFailure, match="not JSON") as failure:
        handle(OPENAI, "<html>502 Bad Gateway</html>")
    assert failure.value.kind == "response_parsing"
    assert "502 Bad Gateway" in failure.value.message


def test_an_unknown_event_without_a_default_is_a_parsing_failure():
    spec = {"key": "/type", "events": {"content-delta": [{"text": "/text"}]}}
    assert handle(spec, {"type": "content-delta", "text": "a"})[0] == [("text", "a")]
    with pytest.raises(StreamFailure, match="unknown stream event 'citation-start'") as failure:
        handle(spec, {"type": "citation-start"})
    assert failure.value.kind == "response_parsing"
    with pytest.raises(StreamFailure, match="unknown stream event"):
        handle({"key": "event", "events": {"a": ["ignore"]}}, {}, event=None)


@pytest.mark.parametrize("key", [["content-delta"], {"a": 1}])
def test_a_key_that_is_a_list_or_an_object_is_a_parsing_failure(key):
    spec = {"key": "/type", "events": {"content-delta": [{"text": "/text"}], "_default": ["ignore"]}}
    with pytest.raises(StreamFailure, match="malformed stream frame") as failure:
        handle(spec, {"type": key, "text": "a"})
    assert failure.value.kind == "response_parsing"


def test_frames_are_dispatched_by_a_pointer_key_or_by_nothing():
    keyed = {"key": "/type", "events": {"a": [{"text": "/t"}], "_default": [{"reasoning": "/t"}]}}
    assert handle(keyed, {"type": "a", "t": "x"})[0] == [("text", "x")]
    assert handle(keyed, {"type": "b", "t": "x"})[0] == [("reasoning", "x")]
    assert handle(keyed, {"t": "x"})[0] == [("reasoning", "x")]  # no key: the default
    assert handle(keyed, "[1, 2]")[0] == []  # a JSON value that is not an object
    unkeyed = {"events": {"_default": [{"text": "/t"}], "a": [{"reasoning": "/t"}]}}
    assert handle(unkeyed, {"type": "a", "t": "x"})[0] == [("text", "x")]


def test_empty_and_non_string_text_is_skipped():
    spec = {"events": {"_default": [{"text": "/t"}, {"reasoning": "/r"}]}}
    assert handle(spec, {"t": "", "r": None})[0] == []
    assert handle(spec, {"t": 5, "r": ["x"]})[0] == []


def test_reasoning_text_is_kept_in_state():
    spec = {"events": {"_default": [{"reasoning": "/r"}]}}
    state = numbered_state()
    handle(spec, {"r": "a"}, state=state)
    handle(spec, {"r": "b"}, state=state)
    assert state.vars["reasoning"] == "ab"


def test_tool_start_without_an_id_gets_one_and_indexes_count_up():
    spec = {"events": {"_default": [{"each": {"in": "/parts", "cases": {"_default": [
        {"tool_start": {"name": "/functionCall/name", "args": "/functionCall/args", "carry": {"sig": "/sig"}}}]}}}]}}
    deltas, state = handle(spec, {"parts": [{"functionCall": {"name": "f", "args": {"city": "Zürich"}}, "sig": "s1"},
                                            {"functionCall": {"name": "g"}}]})
    assert [d[:2] for d in deltas] == [("tool_start", 0), ("tool_args", 0), ("tool_start", 1)]
    assert split_call_id(deltas[0][2], "~") == ("call_1", {"sig": "s1"})
    assert deltas[0][3] == "f"
    assert deltas[1][2] == '{"city":"Zürich"}'  # compact JSON, not escaped to ASCII
    assert deltas[2] == ("tool_start", 1, "call_2", "g")  # no carry: a plain id, no arguments
    assert state.next_tool_index == 2


def test_tool_start_honours_when_and_a_missing_name():
    spec = {"events": {"_default": [{"tool_start": {"id": "/id", "name": "/name", "when": {"has": "/id"}}}]}}
    assert handle(spec, {"name": "f"})[0] == []
    deltas, state = handle(spec, {"id": "c1"})
    assert deltas == [("tool_start", 0, "c1", "")]
    assert state.tool_index == {0: 0}  # keyless calls are keyed by their index


def test_tool_args_go_to_the_call_under_their_key_or_the_last_one():
    spec = {"key": "/k", "events": {
        "start": [{"tool_start": {"key": "/i", "id": "/id", "name": "/n"}}],
        "keyed": [{"tool_args": {"key": "/i", "from": "/a"}}],
        "last": [{"tool_args": {"from": "/a"}}],
    }}
    state = numbered_state()
    handle(spec, {"k": "start", "i": "x", "id": "c1", "n": "f"}, state=state)
    handle(spec, {"k": "start", "i": "y", "id": "c2", "n": "g"}, state=state)
    assert handle(spec, {"k": "keyed", "i": "x", "a": "{"}, state=state)[0] == [("tool_args", 0, "{")]
    assert handle(spec, {"k": "last", "a": "}"}, state=state)[0] == [("tool_args", 1, "}")]
    assert handle(spec, {"k": "last", "a": ""}, state=state)[0] == []
    with pytest.raises(StreamFailure, match="unknown call 'z'") as failure:
        handle(spec, {"k": "keyed", "i": "z", "a": "{}"}, state=state)
    assert failure.value.kind == "response_parsing"


def test_the_content_tool_streams_its_arguments_as_text():
    deltas, _, _ = read_all(ANTHROPIC, b"".join([
        sse("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "json_output"}}),
        sse("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}}),
        sse("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        sse("message_stop", {}),
    ]))
    assert deltas == [("text", '{"a": '), ("text", "1}")]


def test_finish_keeps_the_last_reason_and_meta_the_first_values():
    spec = {"events": {"_default": [{"meta": {"id": "/id", "model": "/model"}}, {"finish": "/f"}]}}
    state = numbered_state()
    for frame in ({"id": "", "f": "length"}, {"id": "a", "model": "m1", "f": "stop"}, {"id": "b", "model": "m2"}):
        handle(spec, frame, state=state)
    assert (state.id, state.model, state.raw_finish) == ("a", "m1", "stop")


def test_usage_merges_objects_and_ignores_anything_else():
    spec = {"events": {"_default": [{"usage": "/u"}]}}
    state = numbered_state()
    for frame in ({"u": {"a": 1, "b": 1}}, {"u": 5}, {"u": {"b": 2}}, {}):
        handle(spec, frame, state=state)
    assert state.raw_usage == {"a": 1, "b": 2}


def test_usage_may_be_the_whole_frame():
    # As ollama.yaml: the final line carries the counts at its top level.
    deltas, state = handle({"events": {"_default": [{"usage": ""}]}}, {"prompt_eval_count": 3, "eval_count": 4})
    assert deltas == []
    assert state.raw_usage == {"prompt_eval_count": 3, "eval_count": 4}


def test_switch_dispatches_by_a_value_and_falls_back_to_its_default():
    spec = {"events": {"_default": [{"switch": {"by": "/role", "cases": {
        "assistant": [{"text": "/content"}], "_default": [{"raise": {"message": "/error"}}]}}}]}}
    assert handle(spec, {"role": "assistant", "content": "hi"})[0] == [("text", "hi")]
    with pytest.raises(StreamFailure, match="model not loaded"):
        handle(spec, {"error": "model not loaded"})
    no_default = {"events": {"_default": [{"switch": {"by": "/t", "cases": {"a": [{"text": "/x"}]}}}]}}
    assert handle(no_default, {"t": "b", "x": "y"})[0] == []
    assert handle(no_default, {"t": ["a"], "x": "y"})[0] == []


def test_each_classifies_items_and_skips_ignored_ones():
    spec = {"events": {"_default": [{"each": {
        "in": "/parts",
        "classify": [{"kind": "_ignore", "when": {"has": "/skip"}}, {"kind": "reasoning", "when": {"eq": ["/thought", True]}},
                     {"kind": "text", "when": {"has": "/text"}}],
        "cases": {"reasoning": [{"reasoning": "/text"}], "text": [{"text": "/text"}]},
    }}]}}
    parts = [{"text": "hmm", "thought": True}, {"text": "skip me", "skip": 1}, {"text": "Hi"}, {"inlineData": {}}]
    assert handle(spec, {"parts": parts})[0] == [("reasoning", "hmm"), ("text", "Hi")]
    assert handle(spec, {"parts": "not a list"})[0] == []


def test_set_remembers_values_for_later_frames():
    spec = {"key": "/k", "events": {"sig": [{"set": {"signature": "/s", "other": "/absent"}}],
                                    "call": [{"tool_start": {"id": "/id", "name": "/n", "carry": {"sig": "@state/signature"}}}]}}
    state = numbered_state()
    handle(spec, {"k": "sig", "s": "abc"}, state=state)
    assert state.vars == {"signature": "abc"}
    deltas, _ = handle(spec, {"k": "call", "id": "c1", "n": "f"}, state=state)
    assert split_call_id(deltas[0][2], "~") == ("c1", {"sig": "abc"})
    assert "signature" not in state.vars  # a carried state value is used once
    deltas, _ = handle(spec, {"k": "call", "id": "c2", "n": "g"}, state=state)
    assert deltas[0][2] == "c2"


def test_raise_reports_the_upstream_error_with_its_kind_and_body():
    spec = {"events": {"_default": [{"raise": {"kind": "overloaded", "message": "/error/message",
                                               "when": {"has": "/error"}}}, {"text": "/t"}]}}
    assert handle(spec, {"t": "fine"})[0] == [("text", "fine")]
    body = {"error": {"message": "Overloaded", "type": "overloaded_error"}}
    with pytest.raises(StreamFailure, match="Overloaded") as failure:
        handle(spec, body)
    assert (failure.value.kind, failure.value.message, failure.value.body) == ("overloaded", "Overloaded", body)
    with pytest.raises(StreamFailure, match="upstream error in stream") as failure:
        handle(spec, {"error": {"message": 42}})
    assert failure.value.kind == "overloaded"


def test_done_stops_reading_and_later_frames_of_the_same_read_are_not_dispatched():
    spec = {"key": "/type", "events": {"text": [{"text": "/t"}], "end": [{"finish": "/reason"}, "done"]}}
    raw = sse(None, {"type": "text", "t": "a"}) + sse(None, {"type": "end", "reason": "COMPLETE"})
    raw += sse(None, {"type": "text", "t": "late"})
    deltas, state, _ = read_all(spec, raw)
    assert deltas == [("text", "a")]
    assert state.done and state.raw_finish == "COMPLETE" and state.frames == 2


def test_a_failure_carries_the_deltas_read_before_it():
    raw = sse(None, openai_chunk({"content": "Half"})) + sse(None, openai_chunk({"content": " a"}))
    raw += sse(None, {"error": {"message": "server had an error"}}) + sse(None, openai_chunk({"content": " lost"}))
    reader = compile_stream(OPENAI).reader(numbered_state())
    with pytest.raises(StreamFailure, match="server had an error") as failure:
        reader.feed(raw)
    assert failure.value.partial == [("text", "Half"), ("text", " a")]
    assert reader.output_chars == len("Half a")  # what still reaches the client is counted


def test_an_ndjson_stream_read_at_close():
    spec = {"framing": "ndjson", "events": {"_default": [{"text": "/message/content"}, {"finish": "/done_reason"}]}}
    raw = b'{"message": {"content": "Hel"}}\n{"message": {"content": "lo"}}\n{"done_reason": "stop"}'
    state = numbered_state()
    reader = compile_stream(spec).reader(state)
    assert reader.feed(raw) == [("text", "Hel"), ("text", "lo")]
    assert reader.close() == []
    assert state.raw_finish == "stop" and state.frames == 3


# ----------------------------------------------------------------------- compiling and kinds
def test_compile_stream_defaults():
    spec = compile_stream({"events": {"_default": ["ignore"]}})
    assert isinstance(spec, StreamSpec)
    assert (spec.framing, spec.key, spec.done_data, spec.passthrough) == ("sse", "none", None, None)
    assert spec.new_framer() is not spec.new_framer()


def test_passthrough_inspect_marks_are_bytes():
    spec = compile_stream({**OPENAI, "passthrough": {"inspect": ['"finish_reason":"', '"usage":{']}})
    assert spec.passthrough == (b'"finish_reason":"', b'"usage":{')
    assert compile_stream({**OPENAI, "passthrough": None}).passthrough is None


def test_the_reader_forwards_only_sse_without_special_tokens():
    from engine.streaming.passthrough import Passthrough

    forwarding = compile_stream({**OPENAI, "passthrough": {"inspect": ['"finish_reason":"']}})
    assert isinstance(forwarding.reader(StreamState()), Passthrough)
    assert isinstance(forwarding.reader(StreamState(), special_tokens=("</s>",)), EventReader)
    ndjson = compile_stream({**OPENAI, "framing": "ndjson", "passthrough": {"inspect": ['"finish_reason":"']}})
    assert isinstance(ndjson.reader(StreamState()), EventReader)
    assert isinstance(compile_stream(OPENAI).reader(StreamState()), EventReader)


@pytest.mark.parametrize(("action", "message"), [
    ({"emit": "/x"}, "unknown stream action 'emit'"),
    ("stop", "a stream action is 'ignore', 'done' or a one-key object"),
    ({"text": "/a", "finish": "/b"}, "one-key object"),
])
def test_malformed_actions_are_rejected_at_compile_time(action, message):
    with pytest.raises(ValueError, match=message):
        compile_stream({"events": {"_default": [action]}})


def test_nested_malformed_actions_are_rejected_too():
    with pytest.raises(ValueError, match="unknown stream action 'txt'"):
        compile_stream({"events": {"_default": [{"switch": {"by": "/t", "cases": {"a": [{"txt": "/x"}]}}}]}})


def test_delta_chars_counts_generated_characters():
    assert delta_chars([("text", "abc"), ("reasoning", "de"), ("tool_start", 0, "call_123", "get"),
                        ("tool_args", 0, "{}"), ("tool_start", 1, "c", None)]) == 3 + 2 + 3 + 2
    assert delta_chars([]) == 0


def test_stream_state_starts_empty_and_separate():
    first, second = StreamState(), StreamState()
    first.raw_usage["a"] = 1
    first.vars["x"] = 1
    assert second.raw_usage == {} and second.vars == {}
    assert not first.has_tool_calls and not first.done and first.frames == 0
    assert first.new_call_id("call_").startswith("call_")


def test_stream_failure_fields():
    failure = StreamFailure("rate_limit", "slow down", {"error": {}})
    assert str(failure) == "slow down"
    assert (failure.kind, failure.message, failure.body, failure.partial) == ("rate_limit", "slow down", {"error": {}}, [])
