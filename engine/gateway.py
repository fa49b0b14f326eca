"""One chat request through the pipeline: resolve -> translate -> upstream -> translate back.

Independent of the HTTP framework, so any client-facing format can sit in front of it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import GatewayError, ResponseParsing, error_for_kind
from .images import ImageFetcher, inline_image_urls
from .models import Target, resolve_model
from .specs import Catalog
from .streaming import ChunkWriter, MessageAssembler, StreamFailure, StreamState
from .translate import build_request, completion_from_reply, error_from_reply, normalize_completion
from .upstream import Upstream, iter_chunks

__all__ = ["ChatResult", "Gateway", "StreamResult"]


@dataclass
class ChatResult:
    completion: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResult:
    """An upstream stream already open and producing; `body` yields OpenAI SSE bytes."""

    body: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def _served_by(target: Target, attempts: int) -> dict[str, str]:
    return {"x-gaud-deployment": target.name, "x-gaud-attempts": str(attempts)}


class Gateway:
    """Serves OpenAI chat requests from a catalog of specs through one upstream pool."""

    def __init__(self, catalog: Catalog, upstream: Upstream, images: ImageFetcher | None = None) -> None:
        self.catalog = catalog
        self.upstream = upstream
        self.images = images or ImageFetcher()

    def targets(self, body: dict[str, Any]) -> list[Target]:
        return resolve_model(self.catalog, body.get("model") if isinstance(body, dict) else None)

    # -- non-streaming --------------------------------------------------------------------------
    async def _for_target(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """The request as this deployment needs it (remote images fetched when the spec says so)."""
        if target.provider.inline_image_urls:
            return await inline_image_urls(body, self.images)
        return body

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        target = self.targets(body)[0]
        body = await self._for_target(target, body)
        endpoint = target.provider.endpoints["chat"]
        if endpoint.stream_only:
            completion = await self._chat_from_stream(target, body)
        else:
            request = build_request(target, body, stream=False)
            reply = await self.upstream.send(request)
            if reply.status >= 400:
                raise error_from_reply(target, reply.status, reply.body, reply.headers)
            try:
                raw = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                raise ResponseParsing(f"{target.provider.name} returned a reply that is not JSON") from None
            completion = completion_from_reply(target, raw, requested_model=body["model"])
        return ChatResult(completion, _served_by(target, 1))

    async def _chat_from_stream(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """Serve a non-stream request from a streamed upstream (spec: `endpoints.chat.stream_only`)."""
        assembler = MessageAssembler(target.provider.special_tokens)
        state = StreamState()
        async with AsyncExitStack() as stack:
            response = await self._open(stack, target, body)
            async for deltas in self._deltas(target, response, state):
                assembler.add(deltas)
        out = {
            "id": state.id,
            "model": state.model,
            "choices": [{"message": assembler.message(), "finish_reason": state.raw_finish}],
        }
        return normalize_completion(out, target, state.raw_usage or None, body["model"])

    # -- streaming ------------------------------------------------------------------------------
    async def chat_stream(self, body: dict[str, Any]) -> StreamResult:
        """Open the upstream stream and read it up to the first delta before answering, so a
        failure before the first byte is an ordinary error (status code, retry, fallback)."""
        target = self.targets(body)[0]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stack = AsyncExitStack()
        try:
            response = await self._open(stack, target, body)
            pieces = self._relay(target, response, body["model"], include_usage)
            first = await pieces.__anext__()
        except BaseException:
            await stack.aclose()
            raise

        async def body_bytes() -> AsyncIterator[bytes]:
            try:
                yield first
                async for piece in pieces:
                    yield piece
            finally:
                await pieces.aclose()
                await stack.aclose()

        return StreamResult(body_bytes(), _served_by(target, 1))

    async def _open(self, stack: AsyncExitStack, target: Target, body: dict[str, Any]) -> Any:
        request = build_request(target, await self._for_target(target, body), stream=True)
        response = await stack.enter_async_context(self.upstream.open_stream(request))
        if response.status >= 400:
            payload = await response.read()
            raise error_from_reply(target, response.status, payload, response.headers)
        return response

    async def _deltas(self, target: Target, response: Any, state: StreamState) -> AsyncIterator[list[Any]]:
        """Upstream bytes -> lists of neutral deltas, through the spec's framing and event table."""
        stream = target.provider.stream
        framer = stream.new_framer()
        try:
            async for chunk in iter_chunks(response):
                for event, data in framer.feed(chunk):
                    deltas = stream.handle(event, data, state)
                    if deltas:
                        yield deltas
                    if state.done:
                        return
            for event, data in framer.close():
                deltas = stream.handle(event, data, state)
                if deltas:
                    yield deltas
        except StreamFailure as failure:
            raise self._stream_error(target, failure) from None

    def _stream_error(self, target: Target, failure: StreamFailure) -> GatewayError:
        if failure.kind is not None:
            return error_for_kind(failure.kind, f"{target.provider.name} stream error: {failure.message}")
        return target.provider.classify_error(None, failure.body)

    async def _relay(
        self, target: Target, response: Any, requested_model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        spec = target.provider
        state = StreamState()
        writer = ChunkWriter(model=target.model or requested_model, created=int(time.time()), special_tokens=spec.special_tokens)
        sent = False
        try:
            async for deltas in self._deltas(target, response, state):
                piece = writer.write(deltas, state.id, state.model)
                if piece:
                    sent = True
                    yield piece
        except GatewayError as exc:
            if not sent:
                raise
            yield writer.error(exc.to_openai())
            return
        usage = spec.usage_of(state.raw_usage) if include_usage else None
        yield writer.finish(spec.finish_reason(state.raw_finish, state.has_tool_calls), usage)
