"""The AWS event-stream binary encoding (`application/vnd.amazon.eventstream`), decoded incrementally.

A message is: total length (u32), headers length (u32), prelude CRC32 (of those 8 bytes), headers,
payload, message CRC32 (of everything before it). A header is: name length (u8), name (UTF-8),
value type (u8), value (0 true, 1 false: no bytes; 2 byte, 3 short, 4 integer, 5 long: signed
big-endian of 1, 2, 4, 8 bytes; 6 byte array and 7 string: u16 length + bytes; 8 timestamp: i64
milliseconds; 9 uuid: 16 bytes). Integers are big-endian. Limits as the AWS SDKs apply them.

`:message-type` says what a message is: `event` (its `:event-type` names it; the payload goes to the
spec's event table like an SSE frame's data), `exception` (`:exception-type`, a modelled error whose
payload is JSON) or `error` (`:error-code`, `:error-message`). The last two end the stream as an
upstream error classified by the spec's error table, with the type as the error code.

Bytes may split anywhere. A bad CRC, an impossible length or a malformed header is a
`response_parsing` failure of the attempt; bytes left over when the stream ends are an
`incomplete_stream`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import orjson

from .deltas import StreamFailure

__all__ = ["EventStreamFramer", "EventStreamMessage", "MessageDecoder", "encode_message"]

PRELUDE_LENGTH = 12
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
_PRELUDE = struct.Struct("!III")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
#: Fixed-size value types: type -> struct format.
_FIXED = {2: struct.Struct("!b"), 3: struct.Struct("!h"), 4: struct.Struct("!i"), 5: struct.Struct("!q"),
          8: struct.Struct("!q")}

Headers = dict[str, Any]
EventStreamMessage = tuple[Headers, bytes]


def encode_message(headers: Headers, payload: bytes = b"") -> bytes:
    """One message with string headers (type 7), as a recording's replay builds a stream from
    `{event: ..., payload: ...}` items (docs/recordings.md)."""
    block = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), str(value).encode()
        block += bytes([len(raw_name)]) + raw_name + b"\x07" + _U16.pack(len(raw_value)) + raw_value
    prelude = struct.pack("!II", PRELUDE_LENGTH + len(block) + len(payload) + 4, len(block))
    prelude += _U32.pack(zlib.crc32(prelude))
    body = prelude + block + payload
    return body + _U32.pack(zlib.crc32(body))


def _bad(message: str) -> StreamFailure:
    return StreamFailure("response_parsing", f"upstream sent a malformed event-stream message: {message}")


def parse_headers(data: bytes) -> Headers:
    """The header block of one message (values as the AWS SDKs give them: bool, int, bytes, str;
    timestamps as integer milliseconds, uuids as their 16 bytes)."""
    headers: Headers = {}
    at, end = 0, len(data)
    while at < end:
        size = data[at]
        name_end = at + 1 + size
        if name_end + 1 > end:
            raise _bad("a header runs past its block")
        name = data[at + 1:name_end].decode("utf-8", errors="replace")
        kind = data[name_end]
        at = name_end + 1
        if kind in (0, 1):
            value: Any = kind == 0
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            if at + fmt.size > end:
                raise _bad("a header runs past its block")
            value = fmt.unpack_from(data, at)[0]
            at += fmt.size
        elif kind in (6, 7):
            if at + 2 > end:
                raise _bad("a header runs past its block")
            length = _U16.unpack_from(data, at)[0]
            if at + 2 + length > end:
                raise _bad("a header runs past its block")
            raw = data[at + 2:at + 2 + length]
            value = raw.decode("utf-8", errors="replace") if kind == 7 else raw
            at += 2 + length
        elif kind == 9:
            if at + 16 > end:
                raise _bad("a header runs past its block")
            value = data[at:at + 16]
            at += 16
        else:
            raise _bad(f"unknown header value type {kind}")
        headers[name] = value
    return headers


class MessageDecoder:
    """Bytes in, whole checked messages out: `feed(chunk)` yields (headers, payload) pairs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole message."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> Iterator[EventStreamMessage]:
        self._buffer += chunk
        while len(self._buffer) >= PRELUDE_LENGTH:
            total, headers_length, prelude_crc = _PRELUDE.unpack_from(self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise _bad("prelude checksum mismatch")
            payload_length = total - headers_length - PRELUDE_LENGTH - 4
            if payload_length < 0 or headers_length > MAX_HEADERS_LENGTH or payload_length > MAX_PAYLOAD_LENGTH:
                raise _bad(f"impossible lengths (total {total}, headers {headers_length})")
            if len(self._buffer) < total:
                return
            message = bytes(self._buffer[:total])
            del self._buffer[:total]
            if zlib.crc32(message[:-4]) != _U32.unpack_from(message, total - 4)[0]:
                raise _bad("message checksum mismatch")
            headers_end = PRELUDE_LENGTH + headers_length
            yield parse_headers(message[PRELUDE_LENGTH:headers_end]), message[headers_end:-4]


class EventStreamFramer:
    """`stream.framing: aws_eventstream`: messages -> (event name, payload text) frames, as the
    text framers give them; exception and error messages raise the upstream's error."""

    def __init__(self) -> None:
        self._decoder = MessageDecoder()

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str]]:
        for headers, payload in self._decoder.feed(chunk):
            kind = headers.get(":message-type", "event")
            if kind == "event":
                name = headers.get(":event-type")
                yield (name if isinstance(name, str) else None), payload.decode("utf-8", errors="replace")
            else:
                raise _upstream_error(kind, headers, payload)

    def close(self) -> Iterator[tuple[str | None, str]]:
        if self._decoder.pending:
            raise StreamFailure(
                "incomplete_stream", f"the upstream stream ended inside an event-stream message ({self._decoder.pending} bytes)"
            )
        return iter(())


def _upstream_error(kind: Any, headers: Headers, payload: bytes) -> StreamFailure:
    """An `exception` or `error` message as a failure the spec's error table classifies by code."""
    if kind == "exception":
        code = headers.get(":exception-type")
        try:
            body = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            body = None
        message = body.get("message") or body.get("Message") if isinstance(body, dict) else None
    elif kind == "error":
        code, message, body = headers.get(":error-code"), headers.get(":error-message"), None
    else:
        return _bad(f"unknown message type {kind!r}")
    code = code if isinstance(code, str) and code else None
    text = message if isinstance(message, str) and message else code or "upstream error in stream"
    return StreamFailure(None, text, body, code=code)
