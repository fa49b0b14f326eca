"""The block stream writer: canonical OpenAI chunks -> a client's stream of named events, as an
ingress spec's `stream` section describes them.

A client stream is modelled as: start events, then content blocks (reasoning, text, one per tool
call), each opened, fed deltas and closed in order, then end events carrying the stop reason and
usage. Every payload is a template from the spec. Context: `@seq` (the event's sequence number),
`@request` (the client's request), `@estimated_tokens`, `@id`, `@model`, `@created`; in blocks
`@index`, `@text` (the delta), `@accumulated` (the block's text so far), `@id`, `@name`,
`@carry/...`; at the end `@stop_reason`, `@reply` (the whole client reply, the spec's own
`response.map` run on the assembled canonical completion) and `@usage` (its usage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from ..mapping.client import split_carry
from ..pointer import MISSING, get

if TYPE_CHECKING:
    from ..spec.ingress import IngressSpec, StreamEvent

__all__ = ["BlockStreamWriter"]


class BlockStreamWriter:
    def __init__(self, spec: IngressSpec, estimated_tokens: int | None, request: dict[str, Any] | None = None) -> None:
        self.spec = spec
        assert spec.stream is not None
        self.stream = spec.stream
        self.ctx: dict[str, Any] = {"estimated_tokens": estimated_tokens or 0, "request": request or {}, "seq": 0}
        self.started = False
        self.index = -1
        self.open: tuple[str, Any] | None = None  # (kind, key) of the open block
        self.block_ctx: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        # The canonical message, assembled as it streams (for `@reply` at the end).
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []

    # -- framing --------------------------------------------------------------------------------
    def _frame(self, event: str | None, payload: Any) -> bytes:
        data = orjson.dumps(payload)
        if event and self.stream.event_line:
            return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"

    def _render(self, template: Any, ctx: dict[str, Any], event: str | None, out: list[bytes]) -> None:
        ctx["seq"] = self.ctx["seq"]
        payload = template(None, ctx)
        if payload is MISSING:
            return
        self.ctx["seq"] += 1
        if event is None and isinstance(payload, dict):
            named = get(payload, self.stream.block_event)
            event = named if isinstance(named, str) else None
        out.append(self._frame(event, payload))

    def _emit(self, spec: StreamEvent, ctx: dict[str, Any], out: list[bytes]) -> None:
        if spec.when is not None and not spec.when(None, ctx):
            return
        self._render(spec.render, ctx, spec.event, out)

    def _block(self, templates: list[Any], out: list[bytes]) -> None:
        for template in templates:
            self._render(template, self.block_ctx, None, out)

    # -- blocks ---------------------------------------------------------------------------------
    def _close(self, out: list[bytes], carry: dict[str, Any] | None = None) -> None:
        if self.open is None:
            return
        block = self.stream.blocks[self.open[0]]
        if block.finish is not None:
            self.block_ctx["carry"] = {**(self.block_ctx.get("carry") or {}), **(carry or {})}
            self._emit(block.finish, self.block_ctx, out)
        self._block(block.stop, out)
        self.open = None

    def _delta(self, kind: str, key: Any, fields: dict[str, Any], out: list[bytes]) -> None:
        if kind not in self.stream.blocks:
            return
        if self.open != (kind, key):
            self._close(out)
            self.index += 1
            self.open = (kind, key)
            self.block_ctx = {**self.ctx, "index": self.index, "accumulated": "", "text": "", **fields}
            self._block(self.stream.blocks[kind].start, out)
        text = fields.get("text")
        if text:
            self.block_ctx["text"] = text
            self.block_ctx["accumulated"] += text
            self._block(self.stream.blocks[kind].delta, out)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            self.ctx.update(id=chunk.get("id"), model=chunk.get("model"), created=chunk.get("created"))
            # The reply as it stands before any content (no finish reason yet), for `@reply` at the start.
            self.ctx["reply"] = self.spec.from_canonical(
                {"id": chunk.get("id"), "model": chunk.get("model"), "created": chunk.get("created"),
                 "choices": [{"index": 0, "message": {}, "finish_reason": None}]}, self.ctx["request"])
            for event in self.stream.start:
                self._emit(event, self.ctx, out)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                self.reasoning.append(reasoning)
                self._delta("reasoning", None, {"text": reasoning}, out)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text.append(content)
                self._delta("text", None, {"text": content}, out)
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                key = call.get("index", 0)
                if self.open != ("tool_call", key) and call.get("id"):
                    self.calls.append({"id": call["id"], "type": "function",
                                       "function": {"name": fn.get("name"), "arguments": ""}})
                    call_id, taken = split_carry(str(call["id"]), self.stream.carry_sep, self.stream.to_reasoning)
                    self._close(out, taken)
                    self._delta("tool_call", key, {"id": call_id, "name": fn.get("name"), "carry": taken}, out)
                args = fn.get("arguments")
                if isinstance(args, str) and args:
                    if self.calls:
                        self.calls[-1]["function"]["arguments"] += args
                    self._delta("tool_call", key, {"text": args}, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _end(self, out: list[bytes]) -> None:
        self._close(out)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = self.calls
        completion = {
            "id": self.ctx.get("id"), "object": "chat.completion", "created": self.ctx.get("created"),
            "model": self.ctx.get("model"), "usage": self.usage or {},
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason or "stop"}],
        }
        reply = self.spec.from_canonical(completion, self.ctx["request"])
        ctx = {**self.ctx, "stop_reason": self.spec.stop_reason(self.finish_reason or "stop"), "reply": reply,
               "usage": reply.get("usage", {}) if isinstance(reply, dict) else {}}
        for event in self.stream.end:
            self._emit(event, ctx, out)

    async def run(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Consume the gateway's OpenAI SSE bytes; yield the client's events."""
        buffer = b""
        try:
            async for piece in pieces:
                buffer += piece
                out: list[bytes] = []
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    if not frame.startswith(b"data: "):
                        continue
                    data = frame[6:]
                    if data == b"[DONE]":
                        if self.started:
                            self._end(out)
                        continue
                    payload = orjson.loads(data)
                    if "error" in payload and "choices" not in payload:
                        self._close(out)
                        ctx = {**self.ctx, "error": self.spec.error_from_openai(payload)}
                        self._emit(self.stream.error, ctx, out)
                        self.started = False  # no end events after an error
                        continue
                    self._chunk(payload, out)
                if out:
                    yield b"".join(out)
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
