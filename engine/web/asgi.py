"""Raw ASGI for the routes that serve models: reading a request, answering it, and the handler
that hands both to the pipeline. No starlette on this path: its routing, middleware and response
classes cost about half of the per-request time (measured), so the app answers these routes before
starlette sees them (`GatewayApp`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import GatewayError, InvalidRequest
from ..pipeline.stages import ClientGone, Codec, Endpoint, Pipeline
from .sweep import Sweep

__all__ = ["BodyDeadlines", "BodyLimit", "GatewayApp", "PipelineRoute", "Responder", "header_map", "read_body", "request_id", "request_id_header"]

_T = TypeVar("_T")

_ids = random.Random()  # seeded from os.urandom; spawned workers each seed their own


def request_id(headers: Mapping[str, str]) -> str:
    """The client's own `x-request-id` when it sent a sane one, else a new random id."""
    value = headers.get("x-request-id")
    if value is not None and 0 < len(value) <= 128 and value.isascii():
        return value
    # Unique, not secret: a per-process PRNG seeded from the OS, without a getrandom(2) per request.
    return f"{_ids.getrandbits(128):032x}"


def request_id_header(scope: Scope) -> list[tuple[bytes, bytes]]:
    """`x-request-id` for routes served by starlette; the id is also left in the request's state."""
    value = request_id(header_map(scope))
    scope.setdefault("state", {})["request_id"] = value
    return [(b"x-request-id", value.encode())]


def header_map(scope: Scope) -> dict[str, str]:
    """Request headers as a plain dict (names are lower case in ASGI); the first of repeated
    headers wins, as with starlette's Headers, whose every lookup scans the whole list."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


class BodyDeadlines:
    """Ends body reads that outlive `timeout` (server.body_timeout). The deadlines of every read in
    progress are checked by one `Sweep`, so a late read is cancelled within a tick (a quarter of
    `timeout`, at most 1 s) of its deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.expired: set[asyncio.Task[Any]] = set()
        self._due: dict[asyncio.Task[Any], float] = {}
        self._sweep: Sweep[asyncio.Task[Any]] = Sweep(min(1.0, timeout / 4), self._due.get, self._expire)

    async def run(self, read: Awaitable[_T]) -> _T:
        """What `read` (receiving a body) returns, or TimeoutError once it outlives `timeout`."""
        task = asyncio.current_task()
        assert task is not None
        self.start(task)
        try:
            return await read
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            self.finish(task)

    def start(self, task: asyncio.Task[Any]) -> None:
        self._due[task] = monotonic() + self.timeout  # asyncio's loop.time(), without finding the loop
        self._sweep.add(task)

    def finish(self, task: asyncio.Task[Any]) -> None:
        self._due.pop(task, None)
        self._sweep.discard(task)
        self.expired.discard(task)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        del self._due[task]
        self._sweep.discard(task)
        self.expired.add(task)
        task.cancel()


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """How large a request body may be, and how long the client may take to send it (no deadlines: no limit)."""

    max_bytes: int
    deadlines: BodyDeadlines | None = None


def _too_large(max_bytes: int) -> InvalidRequest:
    return _unread_body(InvalidRequest(f"The request body exceeds {max_bytes} bytes.", code="request_too_large", status=413))


def _too_slow(timeout: float) -> InvalidRequest:
    return _unread_body(InvalidRequest(f"The request body was not received within {timeout:g} s.", code="request_timeout", status=408))


def _unread_body(error: InvalidRequest) -> InvalidRequest:
    """The rest of the body is never read: closing the connection stops the sender."""
    error.headers = {"connection": "close"}  # type: ignore[attr-defined]
    return error


async def read_body(headers: Mapping[str, str], receive: Receive, limit: BodyLimit) -> bytes:
    """A JSON request's body within `limit`: a 415, 413 or 408 otherwise, ClientGone on a disconnect."""
    if "json" not in headers.get("content-type", "").lower():
        raise InvalidRequest(
            "Content-Type must be application/json.", param="content-type", code="unsupported_media_type", status=415
        )
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit.max_bytes:
        raise _too_large(limit.max_bytes)
    if limit.deadlines is None:
        return await _receive_body(receive, limit.max_bytes)
    try:
        return await limit.deadlines.run(_receive_body(receive, limit.max_bytes))
    except TimeoutError:
        raise _too_slow(limit.deadlines.timeout) from None


async def _receive_body(receive: Receive, max_bytes: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Responder:
    """One request over raw ASGI, as the pipeline sees it (`stages.Port`): its headers and body,
    and its answer (status, JSON or an SSE stream, with x-request-id) in the client's format."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, codec: Codec, body: BodyLimit) -> None:
        self.headers = header_map(scope)
        self.request_id = request_id(self.headers)
        self.path: str = scope["path"]
        self.receive = receive
        self.send = send
        self.codec = codec
        self.body = body
        self.started = False

    def read(self) -> Awaitable[bytes]:
        return read_body(self.headers, self.receive, self.body)

    def _start(self, status: int, media_type: str, headers: dict[str, str], length: int | None) -> Message:
        raw = [(b"content-type", media_type.encode()), (b"x-request-id", self.request_id.encode())]
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        raw.extend((k.encode(), v.encode()) for k, v in headers.items())
        self.started = True
        return {"type": "http.response.start", "status": status, "headers": raw}

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        content = orjson.dumps(payload)
        await self.send(self._start(status, "application/json", headers or {}, len(content)))
        await self.send({"type": "http.response.body", "body": content})

    async def error(self, exc: GatewayError) -> None:
        status, body = self.codec.error(exc)
        await self.json(status, body, error_headers(exc))

    async def internal_error(self) -> None:
        await self.json(*self.codec.internal_error())

    async def stream(self, pieces: AsyncIterator[bytes], headers: dict[str, str]) -> bool:
        """Send an SSE body as it is produced. A client disconnect cancels the producer at once
        (and with it the upstream request); returns False in that case."""
        task = asyncio.current_task()
        assert task is not None
        gone = False
        receive = self.receive

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.send(self._start(200, "text/event-stream", {
                "cache-control": "no-cache", "x-accel-buffering": "no", **headers}, None))
            async for piece in pieces:
                await self.send({"type": "http.response.body", "body": piece, "more_body": True})
            await self.send({"type": "http.response.body", "body": b""})
            return True
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            return False
        finally:
            watcher.cancel()
            await pieces.aclose()  # type: ignore[attr-defined]


def error_headers(exc: GatewayError) -> dict[str, str]:
    """An error's own headers (rate-limit state) and `retry-after` when it has one."""
    headers = dict(getattr(exc, "headers", {}))
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return headers


class PipelineRoute:
    """A route that serves a model (chat, embeddings, a client format's chat or count_tokens):
    HTTP in, `Pipeline` stages, HTTP out."""

    def __init__(self, pipeline: Pipeline, endpoint: Endpoint | None, codec: Codec, body: BodyLimit) -> None:
        self.pipeline = pipeline
        self.endpoint = endpoint  # None: the client format's count_tokens route
        self.codec = codec
        self.body = body

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Returns the pipeline's coroutine rather than awaiting it in one of its own: one
        # coroutine less per request on the hot path.
        port = Responder(scope, receive, send, self.codec, self.body)
        if self.endpoint is None:
            return self.pipeline.count_tokens(self.codec, port)
        return self.pipeline.run(self.endpoint, self.codec, port)


class GatewayApp:
    """The routes that serve models answered directly; everything else (and lifespan) goes to starlette."""

    def __init__(self, app: Any, fast_routes: dict[str, ASGIApp], in_flight: set[asyncio.Task[Any]] | None = None) -> None:
        self.app = app
        self.fast_routes = fast_routes
        self.state = app.state
        #: The tasks serving those routes now, which a shutdown ends at its deadline (drain.Drain).
        self.in_flight: set[asyncio.Task[Any]] = set() if in_flight is None else in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                task = asyncio.current_task()
                assert task is not None
                self.in_flight.add(task)
                try:
                    await handler(scope, receive, send)
                finally:
                    self.in_flight.discard(task)
                return
        await self.app(scope, receive, send)
