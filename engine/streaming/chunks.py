"""Neutral deltas -> OpenAI `chat.completion.chunk` server-sent events, and -> one message."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError
from .encoders import stream_identity
from .events import Delta
from .tokens import TokenFilter

__all__ = ["ChunkWriter", "MessageAssembler", "message_deltas", "sse"]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Writes OpenAI chunks for one choice; the first delta carries `role: assistant`. The
    OpenAI stream encoder (encoders.py): the class itself is its `EncoderFactory`."""

    def __init__(
        self, *, model: str, created: int, special_tokens: tuple[str, ...] = (), role_sent: bool = False
    ) -> None:
        self.id: str | None = None  # taken from the upstream's first frame when it has one
        self.model = model
        self.created = created
        self._role_sent = role_sent  # True when forwarded upstream chunks carried the role
        self._filter = TokenFilter(special_tokens) if special_tokens else None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }
        )

    def write(self, deltas: list[Delta], upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        if self.id is None:
            self.id, self.model = stream_identity(upstream_id, upstream_model, self.model)
        parts = []
        for delta in deltas:
            kind = delta[0]
            if kind == "text":
                text = self._filter.feed(delta[1]) if self._filter else delta[1]
                if text:
                    parts.append(self._chunk({"content": text}))
            elif kind == "reasoning":
                parts.append(self._chunk({"reasoning_content": delta[1]}))
            elif kind == "tool_start":
                _, index, call_id, name = delta
                call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                parts.append(self._chunk({"tool_calls": [call]}))
            elif kind == "tool_args":
                _, index, fragment = delta
                parts.append(self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        return b"".join(parts)

    def finish(
        self, finish_reason: str | None, usage: dict[str, Any] | None,
        upstream_id: str | None = None, upstream_model: str | None = None,
    ) -> bytes:
        """The last content chunk (held-back text, finish reason; none when `finish_reason` is
        None: a forwarded upstream chunk had it), then the usage chunk if asked, then `[DONE]`."""
        if self.id is None:
            self.id, self.model = stream_identity(upstream_id, upstream_model, self.model)
        out = []
        held = self._filter.flush() if self._filter else ""
        if held:
            out.append(self._chunk({"content": held}))
        if finish_reason is not None:
            out.append(self._chunk({}, finish_reason))
        if usage is not None:
            out.append(
                sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        out.append(DONE)
        return b"".join(out)

    def error(self, exc: GatewayError | dict[str, Any]) -> bytes:
        """The error event (the error's OpenAI body, or that body itself) and nothing after it:
        no `[DONE]`, which would tell a client that reads no error events the reply is whole."""
        return sse(exc.to_openai() if isinstance(exc, GatewayError) else exc)


class MessageAssembler:
    """Collects deltas into one assistant message (a non-stream reply served from a stream)."""

    def __init__(self, special_tokens: tuple[str, ...] = ()) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.tokens = special_tokens

    def add(self, deltas: list[Delta]) -> None:
        for delta in deltas:
            kind = delta[0]
            if kind == "text":
                self.text.append(delta[1])
            elif kind == "reasoning":
                self.reasoning.append(delta[1])
            elif kind == "tool_start":
                _, index, call_id, name = delta
                self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}})
            elif kind == "tool_args":
                _, index, fragment = delta
                self.calls[index]["function"]["arguments"] += fragment

    def message(self) -> dict[str, Any]:
        from .tokens import strip_tokens

        text = strip_tokens("".join(self.text), self.tokens) if self.text else None
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = self.calls
        return message


def message_deltas(message: dict[str, Any]) -> list[Delta]:
    """One whole assistant message as the deltas a stream of it would have held (the inverse of
    MessageAssembler): reasoning, text, then each tool call's start and arguments. Lets an
    encoder stream a reply that came whole (stream emulation)."""
    deltas: list[Delta] = []
    if message.get("reasoning_content"):
        deltas.append(("reasoning", message["reasoning_content"]))
    if message.get("content"):
        deltas.append(("text", message["content"]))
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        deltas.append(("tool_start", index, call.get("id"), function.get("name")))
        if function.get("arguments"):
            deltas.append(("tool_args", index, function["arguments"]))
    return deltas
