"""`framing: aws_eventstream`: our decoder against botocore's on frames built by tests/eventstream_frames.py."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer

from engine.spec.provider import ErrorTable
from engine.streaming import StreamState, compile_stream, make_framer
from engine.streaming.deltas import StreamFailure
from engine.streaming.eventstream import MessageDecoder
from tests.eventstream_frames import encode_message, error, event, exception

ALL_TYPES = [
    ("t", 0, True), ("f", 1, False), ("byte", 2, -7), ("short", 3, -30000), ("int", 4, 2_000_000_000),
    ("long", 5, -(2**62)), ("bytes", 6, b"\x00\xff\x10"), ("string", 7, "héllo ✓"), ("when", 8, 1_717_171_717_000),
    ("id", 9, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes),
]

MESSAGES = [
    encode_message(ALL_TYPES, b'{"x": 1}'),
    encode_message([], b""),
    encode_message([(":message-type", 7, "event")], b""),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Grüße, 世界 🌍"}}),
    event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 5, "totalTokens": 8}, "metrics": {"latencyMs": 9}}),
    encode_message([("big", 7, "v" * 1000)], b"y" * 70_000),
    exception("throttlingException", "Too many requests"),
    error("InternalFailure", "boom"),
]
STREAM = b"".join(MESSAGES)


def botocore_messages(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, m.payload) for m in buffer]


def ours(pieces: list[bytes]) -> list[tuple[dict[str, object], bytes]]:
    decoder = MessageDecoder()
    out = [m for piece in pieces for m in decoder.feed(piece)]
    assert decoder.pending == 0
    return out


def test_every_header_type_and_payload_decode_as_botocore_does() -> None:
    expected = botocore_messages(STREAM)
    assert len(expected) == len(MESSAGES)
    assert ours([STREAM]) == expected
    assert expected[0][0]["string"] == "héllo ✓" and expected[0][0]["long"] == -(2**62)


def test_split_at_every_offset_decodes_identically() -> None:
    head = STREAM[: sum(len(m) for m in MESSAGES[:5])]
    expected = botocore_messages(head)
    for cut in range(len(head) + 1):
        assert ours([head[:cut], head[cut:]]) == expected, cut
    assert ours([bytes([b]) for b in head]) == expected  # one byte at a time
    assert ours([STREAM[i:i + 997] for i in range(0, len(STREAM), 997)]) == botocore_messages(STREAM)


def _failure(data: bytes) -> StreamFailure:
    decoder = MessageDecoder()
    with pytest.raises(StreamFailure) as caught:
        list(decoder.feed(data))
    return caught.value


def test_a_corrupted_prelude_crc_fails_as_response_parsing() -> None:
    bad = bytearray(MESSAGES[3])
    bad[9] ^= 0x01
    failure = _failure(bytes(bad))
    assert failure.kind == "response_parsing" and "prelude checksum" in failure.message


def test_a_corrupted_payload_fails_the_message_crc() -> None:
    bad = bytearray(MESSAGES[3])
    bad[-6] ^= 0x20
    failure = _failure(MESSAGES[4] + bytes(bad))
    assert failure.kind == "response_parsing" and "message checksum" in failure.message


def test_a_corrupted_message_crc_fails() -> None:
    bad = bytearray(MESSAGES[1])
    bad[-1] ^= 0xFF
    assert "message checksum" in _failure(bytes(bad)).message


def _prelude(total: int, headers: int) -> bytes:
    head = struct.pack("!II", total, headers)
    return head + struct.pack("!I", zlib.crc32(head))


@pytest.mark.parametrize(("total", "headers"), [(8, 0), (16, 1), (100, 200_000), (16 + 25 * 1024 * 1024, 0)])
def test_impossible_lengths_fail_at_once_instead_of_waiting(total: int, headers: int) -> None:
    failure = _failure(_prelude(total, headers))
    assert failure.kind == "response_parsing" and "impossible lengths" in failure.message


def test_an_unknown_header_type_or_a_header_past_its_block_fails() -> None:
    block = b"\x01a\x0a"  # type 10 does not exist
    assert "unknown header value type 10" in _failure(_raw(block)).message
    assert "past its block" in _failure(_raw(b"\x05ab")).message  # name longer than the block
    assert "past its block" in _failure(_raw(b"\x01a\x07\x00\x09ab")).message  # string longer than the block


def _raw(block: bytes, payload: bytes = b"") -> bytes:
    total = 16 + len(block) + len(payload)
    body = _prelude(total, len(block)) + block + payload
    return body + struct.pack("!I", zlib.crc32(body))


def test_the_framer_gives_event_names_and_payload_text() -> None:
    framer = make_framer("aws_eventstream")
    frames = list(framer.feed(MESSAGES[3] + MESSAGES[4]))
    assert frames[0] == ("contentBlockDelta", '{"contentBlockIndex":0,"delta":{"text":"Grüße, 世界 🌍"}}')
    assert frames[1][0] == "metadata"
    assert list(framer.close()) == []


def test_a_stream_ending_inside_a_message_is_incomplete() -> None:
    framer = make_framer("aws_eventstream")
    assert [name for name, _ in framer.feed(MESSAGES[3] + MESSAGES[4][:20])] == ["contentBlockDelta"]
    with pytest.raises(StreamFailure) as caught:
        list(framer.close())
    assert caught.value.kind == "incomplete_stream"


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [(exception("throttlingException", "Too many tokens"), "throttlingException", "Too many tokens"),
     (error("InternalFailure", "it broke"), "InternalFailure", "it broke")],
)
def test_exception_and_error_messages_raise_with_their_type_as_code(frame: bytes, code: str, message: str) -> None:
    framer = make_framer("aws_eventstream")
    with pytest.raises(StreamFailure) as caught:
        list(framer.feed(frame))
    assert (caught.value.kind, caught.value.code, caught.value.message) == (None, code, message)


STREAM_SPEC = {
    "framing": "aws_eventstream",
    "key": "event",
    "ends_with": "finish",
    "events": {
        "contentBlockDelta": [{"text": "/delta/text"}],
        "messageStop": [{"finish": "/stopReason"}],
        "metadata": [{"usage": "/usage"}],
        "_default": ["ignore"],
    },
}


def test_an_exception_mid_stream_keeps_the_deltas_before_it_and_is_classified_by_code() -> None:
    spec = compile_stream(STREAM_SPEC)
    state = StreamState()
    framer = spec.new_framer()
    data = event("messageStart", {"role": "assistant"}) + event("contentBlockDelta", {"delta": {"text": "Hi"}})
    data += exception("throttlingException", "Too many tokens, please wait.")
    with pytest.raises(StreamFailure) as caught:
        spec.read(framer, data, state)
    assert caught.value.partial == [("text", "Hi")]
    table = ErrorTable({"by_code": {"throttlingException": "rate_limit"}, "message_from": ["/message"]})
    assert table.kind_of(None, caught.value.body, code=caught.value.code) == ("rate_limit", "Too many tokens, please wait.")
    assert table.kind_of(None, caught.value.body, code="validationException")[0] == "upstream_5xx"  # unlisted: _default


def test_a_whole_stream_through_the_event_table() -> None:
    spec = compile_stream(STREAM_SPEC)
    state = StreamState()
    framer = spec.new_framer()
    data = b"".join([
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {}}),
    ])
    deltas = [d for i in range(0, len(data), 7) for d in spec.read(framer, data[i:i + 7], state)]
    deltas += spec.close(framer, state)
    assert deltas == [("text", "Hel"), ("text", "lo")]
    assert state.raw_finish == "end_turn" and state.raw_usage["totalTokens"] == 5 and spec.complete(state)
