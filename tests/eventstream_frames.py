"""A small AWS event-stream ENCODER for tests, written from the published format (not from the
engine's decoder): prelude (total length u32, headers length u32, CRC32 of those 8 bytes), headers
(name length u8, name, type u8, value), payload, CRC32 of everything before it. Big-endian."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

Header = tuple[str, int, Any]  # (name, value type 0-9, value)


def encode_header(name: str, kind: int, value: Any) -> bytes:
    raw_name = name.encode()
    out = struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!B", kind)
    if kind in (0, 1):
        return out
    if kind in (2, 3, 4, 5, 8):
        return out + struct.pack({2: "!b", 3: "!h", 4: "!i", 5: "!q", 8: "!q"}[kind], value)
    if kind in (6, 7):
        data = value.encode() if isinstance(value, str) else bytes(value)
        return out + struct.pack("!H", len(data)) + data
    if kind == 9:
        assert len(value) == 16
        return out + bytes(value)
    raise ValueError(kind)


def encode_message(headers: list[Header], payload: bytes = b"") -> bytes:
    block = b"".join(encode_header(*h) for h in headers)
    total = 12 + len(block) + len(payload) + 4
    prelude = struct.pack("!II", total, len(block))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack("!I", zlib.crc32(body))


def event(name: str, payload: Any) -> bytes:
    """An `event` message as AWS services send them (JSON payload)."""
    return encode_message(
        [(":event-type", 7, name), (":content-type", 7, "application/json"), (":message-type", 7, "event")],
        orjson.dumps(payload),
    )


def exception(kind: str, message: str) -> bytes:
    return encode_message(
        [(":exception-type", 7, kind), (":content-type", 7, "application/json"), (":message-type", 7, "exception")],
        orjson.dumps({"message": message}),
    )


def error(code: str, message: str) -> bytes:
    return encode_message([(":error-code", 7, code), (":error-message", 7, message), (":message-type", 7, "error")])
