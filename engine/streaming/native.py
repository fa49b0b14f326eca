"""Relay of a stream in the client's own format (same-format pass-through, engine/spec/wire.py).

Every frame is forwarded as the upstream wrote it, whole, and every frame is also read with the
provider spec's event table on the way: usage, the finish reason and the end event are known as
on the translated path (billing, the breaker, the "a stream must end as a whole one does" check),
and an error event fails the stream as there. Only the gateway's own error event, in the client's
envelope, replaces an upstream error frame; nothing is ever added to a stream that ends well.
"""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError
from .deltas import StreamFailure, StreamState, delta_chars
from .encoders import StreamEncoder
from .framing import SseBlocks, SseFramer
from .passthrough import FrameTable

__all__ = ["NativeRelay", "Relayed"]


class NativeRelay:
    """Feed upstream reads, get the whole SSE frames to forward (all of them)."""

    def __init__(self, stream: FrameTable, state: StreamState) -> None:
        self.stream = stream
        self.state = state
        self.output_chars = 0
        self._blocks = SseBlocks()
        self._framer = SseFramer()

    def feed(self, chunk: bytes) -> bytes:
        block = self._blocks.take(chunk)
        return self._frames(block) if block else b""

    def close(self) -> bytes:
        """The end of the upstream body: a last frame without its blank line is read and forwarded."""
        tail = self._blocks.rest()
        if not tail or self.state.done:
            return b""
        return self._frames(tail + b"\n\n")

    def _frames(self, block: bytes) -> bytes:
        kept: list[bytes] = []
        for frame in block.split(b"\n\n"):
            if not frame.strip():
                continue
            try:
                self._read(frame)
            except StreamFailure as failure:
                failure.partial = b"".join(f + b"\n\n" for f in kept)  # type: ignore[assignment]
                raise
            kept.append(frame)
            if self.state.done:
                break
        return b"".join(f + b"\n\n" for f in kept)

    def _read(self, frame: bytes) -> None:
        parsed = list(self._framer.feed(frame + b"\n\n"))
        if not parsed:
            return  # a comment or a frame without data
        (event, data), = parsed
        self.state.frames += 1
        self.output_chars += delta_chars(self.stream.handle(event, data, self.state))


class Relayed:
    """The encoder of a relayed stream: the frames went out as they came, so it writes nothing but
    an error event after a failure, in the client's envelope (its format's own encoder's)."""

    def __init__(self, inner: StreamEncoder) -> None:
        self.inner = inner

    def write(self, deltas: Any, upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        return deltas if isinstance(deltas, bytes) else b""

    def finish(self, finish_reason: str | None, usage: dict[str, Any] | None,
               upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        return b""

    def error(self, exc: GatewayError) -> bytes:
        return self.inner.error(exc)
