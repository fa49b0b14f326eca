"""Shutdown that tells the truth: what becomes of requests still running when the server stops.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits for the requests in flight.
Left alone, it cancels them at its graceful deadline: a non-stream gets its plain-text 500, a
stream is cut, and the audit log records neither. So the gateway keeps that deadline itself:
`server.shutdown_timeout` seconds after the signal it cancels the requests that serve models
with `Shutdown.CANCEL`, which the pipeline turns into a `shutdown` error (a JSON 503, or an error
event on a stream already started) that is settled and audited like any other. uvicorn's own
deadline is set `SHUTDOWN_GRACE` seconds later (engine.cli), as a backstop for whatever does
not end on its cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..errors import Shutdown

__all__ = ["SHUTDOWN_GRACE", "Drain"]

log = logging.getLogger("gaud.server")

#: Seconds uvicorn waits past `server.shutdown_timeout` before it cancels what is left itself:
#: time for the requests the gateway ended to answer, settle and queue their audit records.
SHUTDOWN_GRACE = 2.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The tasks serving model requests in this process (`tasks`, kept by `GatewayApp`), and the
    shutdown clock that ends those still running `timeout` seconds after a stop signal."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.ended = 0  # requests ended by the shutdown deadline

    def begin(self) -> None:
        """Start the shutdown clock (once; later signals do not restart it)."""
        if self._timer is None:
            log.info("stopping: %d request(s) in flight get %g s to finish", len(self.tasks), self.timeout)
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self.expire)

    def expire(self) -> None:
        """End every request still running, as a `shutdown` error."""
        if self.tasks:
            log.warning("server.shutdown_timeout (%g s) reached: ending %d request(s) with 503 shutdown",
                        self.timeout, len(self.tasks))
        for task in list(self.tasks):
            self.ended += 1
            task.cancel(Shutdown.CANCEL)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def watch_signals(self) -> Callable[[], None]:
        """Start the clock on SIGTERM and SIGINT, then run the server's own handler (uvicorn's,
        which begins its graceful shutdown). Only where a server installed a handler, and only in
        the main thread; returns what puts the previous handlers back."""
        loop = asyncio.get_running_loop()
        previous: dict[int, Any] = {}

        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin)  # wakes the loop; a signal handler must not wait
            previous[sig](sig, frame)

        try:
            for sig in _SIGNALS:
                current = signal.getsignal(sig)
                if callable(current):
                    previous[sig] = current
                    signal.signal(sig, handler)
        except ValueError:  # not the main thread: no signals here
            log.debug("stop signals not watched in this thread")

        def restore() -> None:
            for sig, old in previous.items():
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, old)

        return restore
