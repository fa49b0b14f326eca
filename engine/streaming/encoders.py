"""Stream encoders: what turns the gateway's canonical stream into the bytes a client reads.

The gateway reads an upstream stream into neutral deltas (events.py) and hands them to one
encoder per attempt, which writes the client's wire format directly from those objects:

    ChunkWriter (chunks.py)          OpenAI `chat.completion.chunk` server-sent events, `[DONE]`
    BlockStreamWriter (blocks.py)    a client format's named events (an ingress spec's `stream`)

An encoder sees the deltas as they come (`write`), then exactly one of: the end of the stream
(`finish`, with the finish reason and usage) or a failure after something was sent (`error`, the
`GatewayError` itself, rendered in the client's own error envelope).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from ..errors import GatewayError
from .events import Delta

__all__ = ["EncoderFactory", "StreamEncoder", "stream_identity"]


class StreamEncoder(Protocol):
    """Canonical deltas in, client bytes out (`b""` when a call has nothing to send yet)."""

    def write(self, deltas: list[Delta], upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        """Bytes for one batch of deltas (the frames of one upstream read)."""
        ...

    def finish(
        self, finish_reason: str | None, usage: dict[str, Any] | None,
        upstream_id: str | None = None, upstream_model: str | None = None,
    ) -> bytes:
        """The end of the stream: held-back text, the finish reason and usage (None when the client
        did not ask for it), and whatever closes the client's stream."""
        ...

    def error(self, exc: GatewayError) -> bytes:
        """A failure after the first byte: the client's error event; nothing follows it."""
        ...


class EncoderFactory(Protocol):
    """Makes the encoder of one attempt. `model` is the model to report until the upstream names
    one, `created` the stream's timestamp, `special_tokens` the text to filter out of content."""

    def __call__(self, *, model: str, created: int, special_tokens: tuple[str, ...] = ()) -> StreamEncoder: ...


def stream_identity(upstream_id: str | None, upstream_model: str | None, model: str) -> tuple[str, str]:
    """A stream's id and model: the upstream's when it named them, else a new id and `model`."""
    return upstream_id or f"chatcmpl-{uuid.uuid4().hex}", upstream_model or model
