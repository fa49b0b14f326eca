"""engine/streaming/framing.py: upstream bytes -> (event, data) frames, for SSE and NDJSON, whatever
the read boundaries."""

from __future__ import annotations

import pytest

from engine.streaming import make_framer
from engine.streaming.framing import NdjsonFramer, SseFramer


def frames_of(kind: str, pieces: list[bytes]) -> list[tuple[str | None, str]]:
    framer = make_framer(kind)
    out = []
    for piece in pieces:
        out.extend(framer.feed(piece))
    out.extend(framer.close())
    return out


def every_split(raw: bytes) -> list[list[bytes]]:
    """The stream in one read, byte by byte, and cut in two at every offset."""
    return [[raw], [raw[i:i + 1] for i in range(len(raw))]] + [[raw[:cut], raw[cut:]] for cut in range(1, len(raw))]


def test_make_framer_picks_by_kind():
    assert isinstance(make_framer("ndjson"), NdjsonFramer)
    assert isinstance(make_framer("sse"), SseFramer)
    assert isinstance(make_framer("anything else"), SseFramer)  # SSE is the default framing


# ---------------------------------------------------------------------------------------- SSE
ANTHROPIC = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"text":"Gr\xc3\xbc\xc3\x9fe \xf0\x9f\x91\x8b"}}\n\n'
)
ANTHROPIC_FRAMES = [
    ("message_start", '{"type":"message_start","message":{"id":"msg_1"}}'),
    ("ping", '{"type": "ping"}'),
    ("content_block_delta", '{"type":"content_block_delta","delta":{"text":"Grüße 👋"}}'),
]


@pytest.mark.parametrize("raw", [ANTHROPIC, ANTHROPIC.replace(b"\n", b"\r\n")], ids=["lf", "crlf"])
def test_sse_frames_are_the_same_at_any_split(raw):
    for pieces in every_split(raw):
        assert frames_of("sse", pieces) == ANTHROPIC_FRAMES, [len(p) for p in pieces]


def test_sse_data_lines_join_with_newlines_and_the_space_after_the_colon_is_optional():
    raw = b"data: line one\ndata:line two\ndata:  indented\n\n"
    assert frames_of("sse", [raw]) == [(None, "line one\nline two\n indented")]


def test_sse_comments_ids_retries_and_frames_without_data_are_skipped():
    raw = (b": keep-alive\n\n"
           b"id: 7\nretry: 1000\nevent: ping\n\n"  # no data: no frame, and the event name is forgotten
           b"data: [DONE]\n\n")
    assert frames_of("sse", [raw]) == [(None, "[DONE]")]


def test_sse_event_name_applies_to_one_frame_only():
    raw = b"event: error\ndata: {}\n\ndata: {\"a\": 1}\n\n"
    assert frames_of("sse", [raw]) == [("error", "{}"), (None, '{"a": 1}')]


def test_sse_event_name_is_stripped():
    assert frames_of("sse", [b"event:  message_stop \ndata: {}\n\n"]) == [("message_stop", "{}")]


def test_sse_a_last_frame_without_its_blank_line_is_read_at_close():
    framer = make_framer("sse")
    assert list(framer.feed(b'data: {"a": 1}\n\ndata: {"b": 2}')) == [(None, '{"a": 1}')]
    assert list(framer.close()) == [(None, '{"b": 2}')]
    framer = make_framer("sse")
    assert list(framer.feed(b'data: {"b": 2}\r\n')) == []
    assert list(framer.close()) == [(None, '{"b": 2}')]


def test_sse_close_without_anything_pending_yields_nothing():
    framer = make_framer("sse")
    assert list(framer.feed(b"data: x\n\n")) == [(None, "x")]
    assert list(framer.close()) == []
    assert list(make_framer("sse").close()) == []


def test_sse_invalid_utf8_is_replaced_not_fatal():
    assert frames_of("sse", [b"data: a\xffb\n\n"]) == [(None, "a\ufffdb")]


def test_sse_a_multibyte_character_split_over_reads():
    euro = "€".encode()
    framer = make_framer("sse")
    out = list(framer.feed(b"data: " + euro[:1])) + list(framer.feed(euro[1:2])) + list(framer.feed(euro[2:] + b"\n\n"))
    assert out == [(None, "€")]


# ------------------------------------------------------------------------------------- NDJSON
OLLAMA = (
    b'{"model":"llama3","message":{"role":"assistant","content":"Hel"},"done":false}\n'
    b'{"model":"llama3","message":{"role":"assistant","content":"l\xc3\xb6"},"done":false}\r\n'
    b"\n"
    b"   \n"
    b'{"model":"llama3","done":true,"done_reason":"stop"}'
)
OLLAMA_FRAMES = [
    (None, '{"model":"llama3","message":{"role":"assistant","content":"Hel"},"done":false}'),
    (None, '{"model":"llama3","message":{"role":"assistant","content":"lö"},"done":false}'),
    (None, '{"model":"llama3","done":true,"done_reason":"stop"}'),
]


def test_ndjson_lines_are_the_same_at_any_split_and_blank_lines_are_skipped():
    for pieces in every_split(OLLAMA):
        assert frames_of("ndjson", pieces) == OLLAMA_FRAMES, [len(p) for p in pieces]


def test_ndjson_yields_a_line_as_soon_as_it_ends():
    framer = make_framer("ndjson")
    assert list(framer.feed(b'{"a": 1}\n{"b"')) == [(None, '{"a": 1}')]
    assert list(framer.feed(b": 2}\n")) == [(None, '{"b": 2}')]
    assert list(framer.close()) == []


def test_ndjson_does_not_parse_lines():
    assert frames_of("ndjson", [b"not json\n"]) == [(None, "not json")]  # the event table decides
