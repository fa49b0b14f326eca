"""A scriptable fake upstream on 127.0.0.1: replays queued replies and records every request.

It runs its own event loop in a thread, so sync tests (the openai SDK) and a gateway in another
process can both talk to it. Faults on command: status codes, retry-after, delays, a connection
reset after N stream frames.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

PROVIDERS = Path(__file__).parent / "providers"
MANIFEST = {f["file"]: f for f in json.loads((Path(__file__).parent / "oracles" / "manifest.json").read_text())["fixtures"]}


def sse_frames(raw: bytes) -> list[bytes]:
    """Split a recorded SSE body into frames, each keeping its blank-line terminator."""
    parts = re.split(rb"(\r\n\r\n|\n\n)", raw)
    frames = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else b"") for i in range(0, len(parts), 2)]
    return [f for f in frames if f.strip()]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    frames: list[bytes] | None = None
    delay: float = 0.0
    frame_delay: float = 0.0
    reset_after: int | None = None


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


class LoopbackServer:
    """An aiohttp app served on 127.0.0.1 (a free port) from its own event loop in a thread, so
    synchronous tests and subprocess gateways can both reach it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def serve(self, app: web.Application) -> str:
        """Start serving `app`; returns its base URL."""
        self._thread.start()

        async def boot() -> str:
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return f"http://127.0.0.1:{port}"

        return asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class FakeUpstream:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.disconnected = threading.Event()
        self._server = LoopbackServer()
        self.url = ""

    # -- scripting ---------------------------------------------------------------------------------
    def reply(self, **kwargs: Any) -> Reply:
        if "json" in kwargs:
            kwargs["body"] = json.dumps(kwargs.pop("json")).encode()
        reply = Reply(**kwargs)
        self.replies.append(reply)
        return reply

    def reply_fixture(self, provider: str, name: str, **kwargs: Any) -> Reply:
        """Queue a recorded reply from tests/providers/<provider>/replies/ with its manifest status."""
        raw = (PROVIDERS / provider / "replies" / name).read_bytes()
        meta = MANIFEST.get(f"{provider}/{name}", {})
        options: dict[str, Any] = {
            "status": meta.get("status", 200),
            "headers": dict(meta.get("headers", {})),
            "content_type": meta.get("content_type", "application/json"),
        }
        if name.endswith(".sse"):
            options["frames"] = sse_frames(raw)
        else:
            options["body"] = raw
        options.update(kwargs)
        return self.reply(**options)

    def last(self) -> Recorded:
        return self.requests[-1]

    def clear(self) -> None:
        self.replies.clear()
        self.requests.clear()
        self.disconnected.clear()

    # -- server -------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append(
            Recorded(request.method, request.path, request.query_string, dict(request.headers), body)
        )
        if not self.replies:
            return web.json_response({"error": {"message": "fake upstream: no reply queued"}}, status=500)
        reply = self.replies.popleft()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.frames is None:
            return web.Response(status=reply.status, body=reply.body, content_type=None,
                                headers={"content-type": reply.content_type, **reply.headers})
        response = web.StreamResponse(status=reply.status, headers={"content-type": reply.content_type, **reply.headers})
        await response.prepare(request)
        try:
            for i, frame in enumerate(reply.frames):
                if reply.reset_after is not None and i >= reply.reset_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(frame)
                if reply.frame_delay:
                    await asyncio.sleep(reply.frame_delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.url = self._server.serve(app)
        return self.url

    def stop(self) -> None:
        self._server.stop()
