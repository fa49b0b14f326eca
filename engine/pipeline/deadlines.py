"""How long a request and each of its attempts may take (settings `upstream.total_timeout`,
`upstream.idle_timeout`, `upstream.request_deadline`; a routes.yaml deployment may set its own
`total_timeout` and `idle_timeout`).

`upstream.read_timeout` bounds one socket read only, so an upstream that sends a keep-alive ping
every few seconds, or a JSON body one byte at a time, never trips it. These bound time itself:

- total: one attempt (connect, reply, and for a stream the whole relay) ends within `total` s;
- idle: once the upstream has answered (its response headers), content comes at least every
  `idle` s: in a stream, text, reasoning or tool calls (not pings or comments); in a JSON body,
  anything but whitespace (a keep-alive some upstreams send while they generate). Before the
  headers, the read timeout bounds the silence (a non-stream reply may take minutes to start);
- request: no attempt starts after the request's deadline, nor a backoff sleep that would end
  after it (the retry is skipped; a fallback may still run), and an attempt running then is cut.

A cut attempt is a `timeout` failure like any other (retried, failed over, counted by its breaker).

Cost: the attempt call runs under a deadline of engine.pipeline.cutoffs (as `asyncio.timeout_at`,
without a loop timer per attempt). A body still coming when the headers
are in (a stream, relayed after the attempt call has returned in whatever task reads it; a JSON
body rarely) is watched by one timer that is moved only when it fires; content just stamps the
time. An expired watch sets an `UpstreamTimeout` on the body, which its next read raises, so
nothing is cancelled outside a read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..errors import GatewayError, UpstreamTimeout
from .cutoffs import cutoffs

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

    def request_ends(self) -> float:
        """When a request starting now must be done, in the running loop's time."""
        return math.inf if self.request is None else asyncio.get_running_loop().time() + self.request

    @staticmethod
    def allows(ends: float, wait: float = 0.0) -> bool:
        """Whether something that takes `wait` s, starting now, ends before `ends`."""
        return ends == math.inf or asyncio.get_running_loop().time() + wait < ends

    def attempt(self, ends: float, total: float | None = None, idle: float | None = None) -> AttemptDeadline:
        """The deadline of an attempt starting now, in a request that `ends`; `total`/`idle`: the
        deployment's own."""
        loop = asyncio.get_running_loop()
        return AttemptDeadline(loop, total or self.total, idle or self.idle, ends, self.request)

    def check(self, ends: float, attempts: int, failures: Sequence[tuple[Any, GatewayError]]) -> None:
        """Before an attempt: raise UpstreamTimeout if the request's deadline has passed."""
        if self.allows(ends):
            return
        after = f" after {attempts} attempt(s)" if attempts else ""
        last = f"; the last failed with {failures[-1][1].kind}" if failures else ""
        error = UpstreamTimeout(f"The request did not finish within its deadline of {self.request:g} s{after}{last}.",
                                attempts=attempts)
        error.duration = self.request
        raise error


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
        timers = cutoffs(self._loop)
        cut = timers.add(self.ends)
        try:
            result = await call
        except BaseException as exc:
            timers.end(cut)
            if cut.expired(exc):
                raise self.error(idle=False) from None
            raise
        timers.end(cut)
        cut.expired(None)  # a deadline that fired as the call returned: its cancellation request taken back
        return result

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
        """Enforce the idle timeout (from now: the response headers are in) and the end on a
        response body, also once the attempt call has returned and a stream is relayed; `stop()`
        when done with it."""
        self._body = body
        self.last = self._loop.time()
        self._arm()

    def touch(self) -> None:
        """Content came now."""
        self.last = self._loop.time()

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
