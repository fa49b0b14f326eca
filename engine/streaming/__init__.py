"""Streaming: framing (SSE, NDJSON) -> the spec's event table -> OpenAI chunks."""

from __future__ import annotations

from .chunks import ChunkWriter, MessageAssembler, message_deltas, sse
from .deltas import StreamFailure, StreamState
from .events import EventReader, StreamSpec, compile_stream
from .framing import make_framer
from .tokens import TokenFilter, strip_tokens

__all__ = [
    "ChunkWriter",
    "EventReader",
    "MessageAssembler",
    "StreamFailure",
    "StreamSpec",
    "StreamState",
    "TokenFilter",
    "compile_stream",
    "make_framer",
    "message_deltas",
    "sse",
    "strip_tokens",
]
