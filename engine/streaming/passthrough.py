"""Pass-through relay for upstreams whose SSE frames are already OpenAI chunks (`stream.passthrough`).

The interpreted path decodes every frame, runs the event table and writes a new chunk: about 4 µs
an event. Here frames are forwarded as the upstream wrote them. Only some frames are read with
the spec's event table: the first ones (id, model, and the size of a frame's envelope), frames
holding one of the `inspect` byte strings (finish reason, usage) and the done frame. A usage-only
frame is held back, since the gateway writes its own usage chunk (with cost) when the client asked;
the done frame too, since the gateway ends the stream itself.

Every frame that is read must have the minimal shape of an OpenAI chunk (`openai_chunk`), and so
must a last frame the upstream left without its blank line: a malformed one fails the stream as
`response_parsing` instead of reaching the client. Frames forwarded unread are not parsed at all.

Characters generated are counted exactly in frames that are read, and estimated in the others as
their length less the envelope (the bytes around the text) of the first frame that carried text or
call arguments: only used to estimate usage when an upstream reports none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .deltas import Delta, StreamFailure, StreamState, delta_chars
from .framing import SseBlocks, SseFramer

__all__ = ["FrameTable", "Passthrough", "openai_chunk"]


class FrameTable(Protocol):
    """What the relay needs of a compiled `stream:` section (events.StreamSpec is one)."""

    @property
    def done_data(self) -> str | None: ...

    def handle(
        self, event: str | None, data: str, state: StreamState, shape: Callable[[Any], bool] | None = None
    ) -> list[Delta]:
        """Interpret one frame; the deltas it produced. A frame `shape` refuses is a StreamFailure."""
        ...


def openai_chunk(obj: Any) -> bool:
    """The least a forwarded frame must be: an object whose `choices` is a list of objects (empty
    in a usage-only chunk). An error frame fails the stream before this is asked."""
    if not isinstance(obj, dict):
        return False
    choices = obj.get("choices")
    return isinstance(choices, list) and all(isinstance(choice, dict) for choice in choices)


class Passthrough:
    """Feed upstream reads, get the bytes to send to the client (whole frames only)."""

    def __init__(self, stream: FrameTable, state: StreamState, inspect: tuple[bytes, ...]) -> None:
        self.stream = stream
        self.state = state
        done = (stream.done_data.encode(),) if stream.done_data else ()
        self.marks = (*inspect, *done)
        # The same marks with a space after a key's colon, for upstreams that write JSON with
        # Python's default separators (`"k": "v"`); the first frame tells which style a stream uses.
        self._spaced = (*(m.replace(b'":', b'": ') if b'": ' not in m else m for m in inspect), *done)
        self._blocks = SseBlocks()
        self._envelope: int | None = None  # bytes of a frame that are not generated text
        self._framer = SseFramer()  # reads the frames that must be read, one whole frame at a time
        self.output_chars = 0

    def feed(self, chunk: bytes) -> bytes:
        block = self._blocks.take(chunk)
        if not block:
            return b""
        envelope = self._envelope
        if envelope is not None and not self._marked(block):
            frames = block.count(b"\n\n")
            self.state.frames += frames
            self.output_chars += max(0, _text_bytes(block) - frames * (envelope + 2))
            return block
        return self._frames(block)

    def _marked(self, raw: bytes) -> bool:
        for mark in self.marks:  # a few substring scans: faster than one regex alternation
            if mark in raw:
                return True
        return False

    def close(self) -> bytes:
        """The end of the upstream body: a last frame without its blank line still counts, and is
        always read (a body cut inside a frame leaves half a chunk here)."""
        tail = self._blocks.rest()
        if not tail or self.state.done:
            return b""
        keep = self._read(tail)
        return tail + b"\n\n" if keep and not self.state.done else b""

    def _frames(self, block: bytes) -> bytes:
        kept: list[bytes] = []
        state = self.state
        for frame in block.split(b"\n\n"):
            if not frame.strip():
                continue
            if self._envelope is not None and not self._marked(frame):
                state.frames += 1
                self.output_chars += max(0, _text_bytes(frame) - self._envelope)
                kept.append(frame)
                continue
            try:
                keep = self._read(frame)
            except StreamFailure as failure:
                failure.partial = _joined(kept)  # type: ignore[assignment]
                raise
            if state.done:
                break
            if keep:
                kept.append(frame)
        return _joined(kept)

    def _read(self, frame: bytes) -> bool:
        """Interpret one frame with the event table; whether it is forwarded."""
        state = self.state
        parsed = list(self._framer.feed(frame + b"\n\n"))
        if not parsed:
            return True  # a comment or a frame without data: harmless to forward
        (event, data), = parsed
        if state.frames == 0 and _spaced_json(data):
            self.marks = self._spaced
        state.frames += 1
        finish, usage = state.raw_finish, dict(state.raw_usage)
        deltas = self.stream.handle(event, data, state, openai_chunk)
        if state.done:
            return False
        if deltas:
            chars = delta_chars(deltas)
            self.output_chars += chars
            if all(delta[0] != "tool_start" for delta in deltas):  # a call's first frame is larger
                envelope = max(0, _text_bytes(frame) - chars)
                self._envelope = envelope if self._envelope is None else min(self._envelope, envelope)
            return True
        usage_only = state.raw_usage != usage and state.raw_finish == finish
        return not usage_only


def _joined(frames: list[bytes]) -> bytes:
    """Frames (without their blank lines) as SSE bytes again."""
    return b"\n\n".join(frames) + b"\n\n" if frames else b""


def _text_bytes(raw: bytes) -> int:
    """Length with each JSON escape (`\\"`, `\\n`) counted as the one character it stands for."""
    return len(raw) - raw.count(b"\\")


def _spaced_json(data: str) -> bool:
    """Whether a JSON object is written with a space after its first key's colon, `{"k": v}`."""
    head = data.lstrip()
    if not head.startswith('{"'):
        return False
    end = head.find('"', 2)  # the end of the first key
    return end > 0 and head[end + 1 : end + 3] == ": "
