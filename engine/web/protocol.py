"""uvicorn's HTTP protocol with two limits on clients that hold a connection without progress.

uvicorn bounds neither of them. Its keep-alive timer runs only between requests, and any byte
received cancels it, so a client that sends its headers one byte at a time (or connects and sends
nothing) holds the connection forever. And its `send` waits on the transport's flow control as
long as the client does not read. The ASGI app cannot help: it runs only once the headers are
complete and has no handle on the connection. So the limits live here:

- `header_timeout`: a request's headers must be complete this many seconds after the connection
  is made, or after the previous response ended. Else the connection is closed, after a JSON 408
  when part of a request had arrived (none for a connection that sent nothing).
- `send_timeout`: a response whose writes stay blocked (the transport's buffer above its
  high-water mark: the client does not read) this long ends: the connection is aborted, which
  the app sees as a client disconnect (a stream is audited as 499, its upstream request closed).

The time to receive a body is the app's to bound (asgi.read_body): it can answer with a JSON 408
and audit it. Memory per slow reader stays bounded without a limit of ours: `send` waits while the
transport's buffer is above its high-water mark (64 KiB), the relay reads the upstream only as it
sends, and the upstream client stops reading its socket once its own buffer is full.

Cost: a float stored per request (one timer per event loop checks every connection's header
deadline); the send timer is armed only while a client does not keep up.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import InvalidRequest
from .sweep import Sweep

__all__ = ["GuardedHttpProtocol"]

log = logging.getLogger("gaud.server")


def _timeout_response(header_timeout: float) -> bytes:
    error = InvalidRequest(
        f"The request headers were not received within {header_timeout:g} s.", code="request_timeout", status=408
    )
    body = orjson.dumps(error.to_openai())
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `header_timeout` and `send_timeout` (see the module).

    The limits are class attributes, set by `configure` in the serving process (in each worker
    with --workers: uvicorn names this class in the config it hands them)."""

    header_timeout: float | None = 10.0
    send_timeout: float | None = 30.0
    _sweeps: ClassVar[dict[asyncio.AbstractEventLoop, Sweep[GuardedHttpProtocol]]] = {}  # one per event loop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: When the headers awaited must be complete (time.monotonic); None while none are awaited.
        self.headers_due: float | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._answered_scope: object = None  # the scope of the last request whose headers arrived
        self._sweep: Sweep[GuardedHttpProtocol] | None = None

    @classmethod
    def configure(cls, *, header_timeout: float | None, send_timeout: float | None) -> None:
        """The limits of every connection served from now on (None: no limit)."""
        cls.header_timeout = header_timeout
        cls.send_timeout = send_timeout

    # -- header_timeout -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.header_timeout is not None:
            sweep = self._sweeps.get(self.loop)
            if sweep is None:
                sweep = self._sweeps[self.loop] = Sweep(
                    min(1.0, self.header_timeout / 4), GuardedHttpProtocol._headers_due, GuardedHttpProtocol.headers_late
                )
            sweep.add(self)
            self._sweep = sweep
            self.headers_due = monotonic() + self.header_timeout

    def on_headers_complete(self) -> None:
        self.headers_due = None
        self._answered_scope = self.scope
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Not when the next request's headers are already in (pipelined: its cycle now runs).
        if self.header_timeout is not None and not self.transport.is_closing() and self.cycle.response_complete:
            self.headers_due = monotonic() + self.header_timeout

    def _headers_due(self) -> float | None:
        return self.headers_due

    def headers_late(self) -> None:
        self.headers_due = None
        if self.transport.is_closing():
            return
        # on_message_begin makes a new scope for each request: a request has begun to arrive.
        begun = self.scope is not None and self.scope is not self._answered_scope
        log.info("closed a connection from %s: request headers not received within %g s",
                 self._peer(), self.header_timeout)
        if begun:
            assert self.header_timeout is not None
            self.transport.write(_timeout_response(self.header_timeout))
        self.transport.close()

    # -- send_timeout -------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timeout is not None and self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_stalled(self) -> None:
        self._send_timer = None
        log.info("closed a connection from %s: the client read nothing for %g s", self._peer(), self.send_timeout)
        self.transport.abort()  # what is buffered for it is dropped; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.headers_due = None
        sweep = self._sweep
        if sweep is not None:
            sweep.discard(self)
            if not sweep.things and self._sweeps.get(self.loop) is sweep:
                del self._sweeps[self.loop]  # its timer stops at its next tick; a later connection starts another
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"
