"""Circuit breakers, one per deployment: closed -> open -> half-open -> closed.

Closed counts consecutive failures; at `failures` it opens. Open refuses every request until
`cooldown` seconds passed, then half-open lets exactly one probe through: its success closes the
breaker, its failure opens it again, and a probe that ends in neither (the client went away) is
released for the next request. The clock is injectable so tests need no sleeps.

A board's `listener(deployment, state, failures)`, set at wiring time (engine/web/server.py gives
the alert sink's), hears a breaker open (from closed) and close (from open or half-open); a failed
half-open probe re-opens it silently, so the listener hears opened and closed alternately.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

__all__ = ["Breaker", "BreakerBoard"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    failures_to_open: int = 5
    cooldown: float = 30.0
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    #: Called with "open" or "closed" on those changes (set by the board).
    notify: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def allow(self) -> bool:
        """May a request go to this deployment now? In half-open, only the first caller may."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
            self.state = HALF_OPEN
            self.probe_in_flight = False
        if self.state == HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        was = self.state
        self.state = CLOSED
        self.consecutive_failures = 0
        self.probe_in_flight = False
        if was != CLOSED and self.notify is not None:
            self.notify(CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self.consecutive_failures >= self.failures_to_open:
            was = self.state
            self.state = OPEN
            self.opened_at = self.clock()
            self.probe_in_flight = False
            if was == CLOSED and self.notify is not None:
                self.notify(OPEN)

    def release(self) -> None:
        """A half-open probe that proved nothing: the next request may probe instead."""
        if self.state == HALF_OPEN:
            self.probe_in_flight = False

    def record(self, ok: bool | None, *, probe: bool) -> None:
        """One attempt's outcome: success, failure, or None for neither (its probe, if `probe`
        says it was let through as the half-open probe, is released)."""
        if ok is None:
            if probe:
                self.release()
        elif ok:
            self.record_success()
        else:
            self.record_failure()

    def snapshot(self) -> dict[str, object]:
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
            return {"state": HALF_OPEN, "consecutive_failures": self.consecutive_failures}
        return {"state": self.state, "consecutive_failures": self.consecutive_failures}


class BreakerBoard:
    """The breakers of every deployment, created on first use."""

    def __init__(self, *, failures: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._breakers: dict[str, Breaker] = {}
        self.listener: Callable[[str, str, int], None] | None = None

    def __getitem__(self, deployment: str) -> Breaker:
        breaker = self._breakers.get(deployment)
        if breaker is None:
            breaker = self._breakers[deployment] = self._new(deployment)
        return breaker

    def _new(self, deployment: str) -> Breaker:
        breaker = Breaker(self.failures, self.cooldown, self.clock)
        breaker.notify = partial(self._changed, deployment)
        return breaker

    def _changed(self, deployment: str, state: str) -> None:
        if self.listener is not None:
            self.listener(deployment, state, self._breakers[deployment].consecutive_failures)

    def states(self) -> dict[str, dict[str, object]]:
        return {name: b.snapshot() for name, b in sorted(self._breakers.items())}
