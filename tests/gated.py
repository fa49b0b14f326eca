"""A controllable OpenAI-compatible fake upstream: while `hold()` is on, each stream stops after
its first chunk (and with `hold(replies=True)` each JSON reply before it is sent) until `release()`, so a test can
keep requests in flight without sleeping. Every request's headers are recorded as it arrives."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

from .fakes import LoopbackServer

COMPLETION = {
    "id": "chatcmpl-gated", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
    body = {"id": "chatcmpl-gated", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class GatedUpstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []  # each request's headers, in arrival order
        self.arrived = threading.Semaphore(0)  # released once per request that arrived
        self.finished = threading.Semaphore(0)  # released once per reply that ended (or was cut)
        self._server = LoopbackServer()
        self._open: asyncio.Event | None = None  # made on the server's loop by start()
        self.url = ""
        self.hold_replies = False

    def _on_loop(self, action: str) -> None:
        async def act() -> None:
            assert self._open is not None
            getattr(self._open, action)()

        asyncio.run_coroutine_threadsafe(act(), self._server._loop).result(10)

    def hold(self, *, replies: bool = False) -> None:
        """Hold streams after their first chunk; with `replies`, JSON replies too."""
        self.hold_replies = replies
        self._on_loop("clear")

    def release(self) -> None:
        self._on_loop("set")

    def wait_arrivals(self, n: int, timeout: float = 20.0) -> None:
        for _ in range(n):
            assert self.arrived.acquire(timeout=timeout), "the upstream did not see the request"

    def wait_finished(self, n: int, timeout: float = 20.0) -> None:
        for _ in range(n):
            assert self.finished.acquire(timeout=timeout), "an upstream reply did not end"

    async def _gate(self) -> None:
        assert self._open is not None
        await asyncio.wait_for(self._open.wait(), 60)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(dict(request.headers))
        self.arrived.release()
        try:
            if not body.get("stream"):
                if self.hold_replies:
                    await self._gate()
                return web.json_response(COMPLETION)
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await response.write(_chunk({"role": "assistant", "content": "first "}))
            await self._gate()
            await response.write(_chunk({"content": "last"}, finish="stop"))
            await response.write(_chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.finished.release()

    def start(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self.url = self._server.serve(app)

        async def make_event() -> None:
            self._open = asyncio.Event()
            self._open.set()

        asyncio.run_coroutine_threadsafe(make_event(), self._server._loop).result(10)
        return self.url

    def stop(self) -> None:
        self.release()
        self._server.stop()
