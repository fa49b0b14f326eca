"""Incremental framing: upstream bytes -> (event name, data) frames, for SSE and NDJSON (and the
binary AWS event stream, in eventstream.py).

Bytes may split anywhere: inside a line, a CRLF pair or a UTF-8 sequence. A small hand-written
parser is used because the SSE libraries on PyPI either wrap one HTTP client's response objects
(httpx-sse) or are synchronous iterators; this one is fed aiohttp chunks on the hot path.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

from .eventstream import EventStreamFramer

__all__ = ["Framer", "NdjsonFramer", "SseBlocks", "SseFramer", "make_framer"]

Frame = tuple[str | None, str]


class Framer:
    """Splits decoded text into lines; subclasses turn lines into frames."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        lines = (self._buffer + self._decoder.decode(chunk)).split("\n")
        self._buffer = lines.pop()
        return self._frames([line.removesuffix("\r") for line in lines])

    def close(self) -> Iterator[Frame]:
        tail = (self._buffer + self._decoder.decode(b"", final=True)).rstrip("\r")
        self._buffer = ""
        return self._frames([tail, ""] if tail else [""])

    def _frames(self, lines: list[str]) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError


class SseFramer(Framer):
    """Server-sent events (text/event-stream): `event:` and `data:` lines, a blank line ends a frame."""

    def __init__(self) -> None:
        super().__init__()
        self._event: str | None = None
        self._data: list[str] = []

    def _frames(self, lines: list[str]) -> Iterator[Frame]:
        for line in lines:
            if not line:
                if self._data:
                    yield self._event, "\n".join(self._data)
                self._event, self._data = None, []
            elif line.startswith("data:"):
                self._data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("event:"):
                self._event = line[6:].strip()
            # comments (':') and other fields (id:, retry:) are ignored


class SseBlocks:
    """Cuts an SSE byte stream into runs of whole frames, for relays that forward bytes as they
    came: `take` answers the complete frames so far (CRLF made LF), `rest` what is left at the end."""

    def __init__(self) -> None:
        self._buffer = b""

    def take(self, chunk: bytes) -> bytes:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")  # a CR at the very end waits for its LF in the buffer
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buffer = data
            return b""
        block, self._buffer = data[: end + 2], data[end + 2 :]
        return block

    def rest(self) -> bytes:
        """The bytes after the last whole frame, without line ends (the body ended there)."""
        tail, self._buffer = self._buffer.strip(b"\r\n"), b""
        return tail


class NdjsonFramer(Framer):
    """Newline-delimited JSON: one object per line."""

    def _frames(self, lines: list[str]) -> Iterator[Frame]:
        for line in lines:
            if line.strip():
                yield None, line


def make_framer(kind: str) -> Framer | EventStreamFramer:
    if kind == "aws_eventstream":
        return EventStreamFramer()
    return NdjsonFramer() if kind == "ndjson" else SseFramer()
