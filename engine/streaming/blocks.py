"""The block stream writer: the stream encoder (encoders.py) of a client format, fed the gateway's
canonical deltas and writing the client's stream of named events, as an ingress spec's `stream`
section describes them (`compile_block_stream` compiles that section).

A client stream is modelled as: start events, then content blocks (reasoning, text, one per tool
call), each opened, fed deltas and closed in order, then end events carrying the stop reason and
usage. Every payload is a template from the spec. Context: `@seq` (the event's sequence number),
`@request` (the client's request), `@estimated_tokens`, `@id`, `@model`, `@created`; in blocks
`@index`, `@text` (the delta), `@accumulated` (the block's text so far), `@id`, `@name`,
`@carry/...`; at the end `@stop_reason`, `@reply` (the whole client reply, the spec's own
`response.map` run on the assembled canonical completion) and `@usage` (its usage); in the error
event `@error` (the gateway error in the client's envelope, as a non-stream error reply has it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..errors import GatewayError
from ..mapping import compile_condition, compile_template
from ..mapping.client import split_carry
from ..pointer import MISSING, compile_pointer, get
from .encoders import stream_identity
from .events import Delta
from .tokens import TokenFilter

__all__ = ["BlockSpec", "BlockStreamSpec", "BlockStreamWriter", "ClientReplies", "StreamEvent", "compile_block_stream"]


# -- the compiled `stream` section ----------------------------------------------------------------
@dataclass
class StreamEvent:
    event: str | None
    render: Any
    when: Any = None


@dataclass
class BlockSpec:
    start: list[Any]
    delta: list[Any]
    stop: list[Any]
    finish: StreamEvent | None


@dataclass
class BlockStreamSpec:
    event_line: bool
    start: list[StreamEvent]
    blocks: dict[str, BlockSpec]
    end: list[StreamEvent]
    error: StreamEvent
    block_event: Any
    carry_sep: str | None
    to_reasoning: frozenset[str]


def _event(spec: dict[str, Any]) -> StreamEvent:
    return StreamEvent(spec.get("event"), compile_template(spec["data"]),
                       compile_condition(spec["when"]) if "when" in spec else None)


def _templates(spec: Any) -> list[Any]:
    """One payload template, or a list of them (one event each: a payload is never a JSON list)."""
    return [compile_template(t) for t in spec] if isinstance(spec, list) else [compile_template(spec)]


def compile_block_stream(spec: dict[str, Any]) -> BlockStreamSpec:
    """An ingress spec's `stream` section, compiled once at load."""
    blocks = {}
    for kind, block in spec["blocks"].items():
        finish = block.get("finish")
        blocks[kind] = BlockSpec(
            _templates(block["start"]), _templates(block["delta"]), _templates(block["stop"]),
            _event(finish) if finish else None,
        )
    carry = spec.get("carry", {})
    return BlockStreamSpec(
        event_line=bool(spec.get("framing", {}).get("event_line", True)),
        start=[_event(e) for e in spec.get("start", [])],
        blocks=blocks,
        end=[_event(e) for e in spec.get("end", [])],
        error=_event(spec["error"]),
        block_event=compile_pointer(spec.get("block_event_from", "/type")),
        carry_sep=carry.get("sep"),
        to_reasoning=frozenset(carry.get("to_reasoning", ())),
    )


class ClientReplies(Protocol):
    """What the writer needs of a client format besides its stream section (an `IngressSpec`)."""

    def from_canonical(self, completion: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def stop_reason(self, finish_reason: Any) -> Any: ...

    def error_body(self, exc: GatewayError) -> tuple[int, dict[str, Any]]: ...


# -- the writer -------------------------------------------------------------------------------------
class BlockStreamWriter:
    """One client stream. A `StreamEncoder`; `functools.partial(BlockStreamWriter, stream, replies,
    estimated_tokens, request)` is its `EncoderFactory` (`IngressSpec.stream_encoder`)."""

    def __init__(
        self, stream: BlockStreamSpec, replies: ClientReplies, estimated_tokens: int | None,
        request: dict[str, Any] | None = None, *, model: str, created: int, special_tokens: tuple[str, ...] = (),
        reply_id: str | None = None, on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.stream = stream
        self.replies = replies
        self.id: str | None = None  # taken from the upstream when it names one (as ChunkWriter does)
        self.reply_id = reply_id  # the gateway's own id instead (a reply it stores)
        self.on_reply = on_reply  # given the whole reply at the end (not after an error)
        self.model = model
        self.created = created
        self._filter = TokenFilter(special_tokens) if special_tokens else None
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

    # -- the encoder --------------------------------------------------------------------------------
    def write(self, deltas: list[Delta], upstream_id: str | None = None, upstream_model: str | None = None) -> bytes:
        if self.id is None:
            self.id, self.model = stream_identity(self.reply_id or upstream_id, upstream_model, self.model)
        out: list[bytes] = []
        for delta in deltas:
            kind = delta[0]
            if kind == "text":
                text = self._filter.feed(delta[1]) if self._filter else delta[1]
                if text:
                    self._text(text, out)
            elif kind == "reasoning":
                self._reasoning(delta[1], out)
            elif kind == "tool_start":
                _, index, call_id, name = delta
                self._tool_start(index, call_id, name, out)
            elif kind == "tool_args":
                _, index, fragment = delta
                self._tool_args(index, fragment, out)
        return b"".join(out)

    def finish(
        self, finish_reason: str | None, usage: dict[str, Any] | None,
        upstream_id: str | None = None, upstream_model: str | None = None,
    ) -> bytes:
        if self.id is None:
            self.id, self.model = stream_identity(self.reply_id or upstream_id, upstream_model, self.model)
        out: list[bytes] = []
        held = self._filter.flush() if self._filter else ""
        if held:
            self._text(held, out)
        if finish_reason is not None:
            self._begin(out)
            self.finish_reason = finish_reason or self.finish_reason
        if usage is not None:
            self._begin(out)
            self.usage = usage or self.usage
        if self.started:
            self._end(out)
        return b"".join(out)

    def error(self, exc: GatewayError) -> bytes:
        out: list[bytes] = []
        self._close(out)
        self._emit(self.stream.error, {**self.ctx, "error": self.replies.error_body(exc)[1]}, out)
        self.started = False  # no end events after an error
        return b"".join(out)

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
    def _begin(self, out: list[bytes]) -> None:
        """The start events, before the first thing the stream says (content or its end)."""
        if self.started:
            return
        self.started = True
        self.ctx.update(id=self.id, model=self.model, created=self.created)
        # The reply as it stands before any content (no finish reason yet), for `@reply` at the start.
        self.ctx["reply"] = self.replies.from_canonical(
            {"id": self.id, "model": self.model, "created": self.created,
             "choices": [{"index": 0, "message": {}, "finish_reason": None}]}, self.ctx["request"])
        for event in self.stream.start:
            self._emit(event, self.ctx, out)

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

    def _text(self, text: str, out: list[bytes]) -> None:
        self._begin(out)
        self.text.append(text)
        self._delta("text", None, {"text": text}, out)

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        self._begin(out)
        if text:
            self.reasoning.append(text)
            self._delta("reasoning", None, {"text": text}, out)

    def _tool_start(self, index: int, call_id: str, name: str, out: list[bytes]) -> None:
        """A new tool call: its block opens (fields carried in its id go to the block before it)."""
        self._begin(out)
        if self.open == ("tool_call", index) or not call_id:
            return
        self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}})
        call_id, taken = split_carry(call_id, self.stream.carry_sep, self.stream.to_reasoning)
        self._close(out, taken)
        self._delta("tool_call", index, {"id": call_id, "name": name, "carry": taken}, out)

    def _tool_args(self, index: int, fragment: str, out: list[bytes]) -> None:
        self._begin(out)
        if fragment:
            if self.calls:
                self.calls[-1]["function"]["arguments"] += fragment
            self._delta("tool_call", index, {"text": fragment}, out)

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
        reply = self.replies.from_canonical(completion, self.ctx["request"])
        ctx = {**self.ctx, "stop_reason": self.replies.stop_reason(self.finish_reason or "stop"), "reply": reply,
               "usage": reply.get("usage", {}) if isinstance(reply, dict) else {}}
        if self.on_reply is not None:
            self.on_reply(reply)
        for event in self.stream.end:
            self._emit(event, ctx, out)
