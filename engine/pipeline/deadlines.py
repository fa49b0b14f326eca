"""How long a request and each of its attempts may take (settings `upstream.total_timeout`,
`upstream.idle_timeout`, `upstream.request_deadline`; a routes.yaml deployment may set its own
`total_timeout` and `idle_timeout`).

`upstream.read_timeout` bounds one socket read only, so an upstream that sends a keep-alive ping
every few seconds, or a JSON body one byte at a time, never trips it. These bound time itself:

- total: one attempt (connect, reply, and for a stream the whole relay) ends within `total` s;
- idle: a stream produces content (text, reasoning, tool calls: what the client gets, not pings,
  comments or whitespace) at least every `idle` s, counted from the attempt's start;
- request: no attempt and no backoff sleep starts after the request's deadline, and an attempt
  still running then is cut.

A cut attempt is a `timeout` failure like any other (retried, failed over, counted by its breaker).

Cost: the attempt call runs under one `asyncio.timeout_at`. A stream body, relayed after the
attempt call has returned (in whatever task reads it), is watched by one timer that is moved only
when it fires; content just stamps the time. An expired watch sets an `UpstreamTimeout` on the
body, which its next read raises, so nothing is cancelled outside a read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..errors import UpstreamTimeout

__all__ = ["AttemptDeadline", "Deadlines"]

T = TypeVar("T")

#: A timer may run a little before its time (the loop's clock resolution).
_SLACK = 0.002


class _Body(Protocol):
    """A stream body an expired watch can fail (aiohttp's StreamReader)."""

    def set_exception(self, exc: BaseException) -> None: ...


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The configured limits in seconds; None: no limit. Defaults: engine/config.py DEFAULTS."""

    total: float | None = 1200.0
    idle: float | None = 300.0
    request: float | None = 1800.0

    @classmethod
    def from_settings(cls, get: Callable[[str], Any]) -> Deadlines:
        values = {}
        for field, name in (("total", "total_timeout"), ("idle", "idle_timeout"), ("request", "request_deadline")):
            value = get(f"upstream.{name}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"upstream.{name} must be a number of seconds above 0, or null for no limit")
            values[field] = None if value is None else float(value)
        return cls(**values)

    def request_ends(self, now: float) -> float:
        """When a request starting `now` (loop time) must be done."""
        return math.inf if self.request is None else now + self.request

    def attempt(
        self, loop: asyncio.AbstractEventLoop, request_ends: float,
        total: float | None = None, idle: float | None = None,
    ) -> AttemptDeadline:
        """The deadline of an attempt starting now; `total`/`idle`: a deployment's own."""
        return AttemptDeadline(loop, total or self.total, idle or self.idle, request_ends, self.request)

    def spent(self, attempts: int, last_kind: str | None) -> UpstreamTimeout:
        """The error for a request whose deadline passed before it could try again."""
        after = f" after {attempts} attempt(s)" if attempts else ""
        last = f"; the last failed with {last_kind}" if last_kind else ""
        error = UpstreamTimeout(f"The request did not finish within its deadline of {self.request:g} s{after}{last}.",
                                attempts=attempts)
        error.duration = self.request
        return error


class AttemptDeadline:
    """One attempt's end (its total timeout or the request's deadline, whichever comes first)
    and, for a stream, its idle timeout."""

    __slots__ = ("_body", "_chars", "_handle", "_loop", "_request", "_total", "ends", "idle", "last", "started")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, total: float | None, idle: float | None,
        request_ends: float, request: float | None,
    ) -> None:
        self._loop = loop
        self.started = self.last = loop.time()
        own_end = math.inf if total is None else self.started + total
        self.ends = min(own_end, request_ends)
        self._total = total if own_end <= request_ends else None  # None: the request's deadline cuts
        self._request = request
        self.idle = idle
        self._chars = 0
        self._body: _Body | None = None
        self._handle: asyncio.TimerHandle | None = None

    async def run(self, call: Awaitable[T]) -> T:
        """Await the attempt call within the deadline; cut there, it raises UpstreamTimeout."""
        if self.ends == math.inf:
            return await call
        timer = asyncio.timeout_at(self.ends)
        try:
            async with timer:
                return await call
        except TimeoutError:
            if not timer.expired():
                raise
            raise self.error(idle=False) from None

    def error(self, *, idle: bool) -> UpstreamTimeout:
        waited = self._loop.time() - self.started
        if idle:
            message = f"The upstream sent no content for {self.idle:g} s (idle timeout)."
        elif self._total is not None:
            message = f"The upstream did not finish within {self._total:g} s (total timeout)."
        else:
            message = f"The request did not finish within its deadline of {self._request:g} s."
        error = UpstreamTimeout(message)
        error.duration = waited
        return error

    # -- a stream body ----------------------------------------------------------------------------
    def watch(self, body: _Body) -> None:
        """Enforce the idle timeout and the end on a stream body, also once the attempt call has
        returned and the body is relayed; `stop()` when done with it."""
        self._body = body
        self._arm()

    def content(self, chars: int) -> None:
        """Called per upstream read with the characters generated so far: any growth is content."""
        if chars != self._chars:
            self._chars = chars
            self.last = self._loop.time()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> float:
        return self.ends if self.idle is None else min(self.ends, self.last + self.idle)

    def _arm(self) -> None:
        due = self._due()
        if due != math.inf:
            self._handle = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._handle = None
        due = self._due()
        if self._loop.time() < due - _SLACK:  # content came since the timer was set: move it
            self._handle = self._loop.call_at(due, self._check)
        elif self._body is not None:
            self._body.set_exception(self.error(idle=due < self.ends))
