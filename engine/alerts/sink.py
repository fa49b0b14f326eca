"""The alert sink: a bounded queue, deduplication, and signed delivery with retries, off the hot path.

`emit` is synchronous and never blocks or raises: it drops an event already sent within
`dedupe_seconds` (same dedupe key) and a state event (a breaker's) that repeats the last state
sent for its subject (no time window for those), and when the queue is full it drops the oldest queued event
(an alert storm must not grow memory); both are counted. One background task delivers each event
to every webhook that wants its kind (webhooks in parallel, events in order), retrying a connection
error, a timeout, a 408, a 429 or a 5xx with exponential backoff and jitter up to `attempts` times;
then it gives up, logs and counts. Other answers (a 4xx) are not retried.

Signature (with a webhook `secret`): `x-gaud-timestamp` is the Unix time in seconds of the attempt,
and `x-gaud-signature: sha256=<hex>` the HMAC-SHA256, under the secret, of the timestamp, a `.`,
and the raw body bytes (`f"{timestamp}.".encode() + body`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from .config import Webhook
from .events import Event, breaker_changed, budget_crossings
from .formats import render

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["AlertSink", "sign"]

log = logging.getLogger("gaud.alerts")

#: HTTP answers worth another attempt; other 4xx mean the receiver refuses this body.
_RETRY_STATUSES = {408, 425, 429}


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `x-gaud-signature` value for one delivery."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class AlertSink:
    """Queues events and delivers them to the webhooks from one background task."""

    def __init__(
        self,
        webhooks: list[Webhook],
        *,
        dedupe_seconds: float = 600.0,
        queue_size: int = 1000,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.webhooks = webhooks
        self.kinds = frozenset().union(*(w.events for w in webhooks))
        self.dedupe_seconds = dedupe_seconds
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.queue: asyncio.Queue[Event] = asyncio.Queue(max(1, queue_size))
        self.counts: Counter[str] = Counter()  # outcome -> events (delivered/failed: per webhook)
        self._seen: dict[str, float] = {}  # dedupe key -> when it was last accepted
        self._states: dict[str, str] = {}  # state event subject -> the last state accepted (one per deployment)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- the emitting side (any task, synchronous) ----------------------------------------------
    def emit(self, event: Event) -> None:
        """Queue `event` for delivery unless no webhook wants it or it is a duplicate."""
        if event.state is not None:
            subject, state = event.state
            if self._states.get(subject) == state:
                if event.kind in self.kinds:
                    self._count(event.kind, "deduplicated")
                return
            # Followed even when no webhook wants this kind: a receiver of openings only must
            # still hear the next opening after a closing it did not want.
            self._states[subject] = state
            if event.kind not in self.kinds:
                return
        elif event.kind not in self.kinds or self._recent(event):
            return
        if self.queue.full():
            dropped = self.queue.get_nowait()
            self.queue.task_done()
            self._count(dropped.kind, "dropped")
            if self.counts["dropped"] == 1 or self.counts["dropped"] % 100 == 0:
                log.warning("alert queue full: the oldest events are dropped (%d so far)", self.counts["dropped"])
        self.queue.put_nowait(event)

    def budget(
        self, scope: str, name: str, period: str, period_start: float, limit: float | None, before: float,
        after: float, warn_at: tuple[float, ...],
    ) -> None:
        """A settle moved `scope` `name`'s spend in `period` from `before` to `after`: one
        `budget.threshold` event per threshold (a `warn_at` fraction, or 100 %) crossed."""
        for event in budget_crossings(scope, name, period, period_start, limit, before, after, warn_at):
            self.emit(event)

    def breaker_listener(self, deployment: str, state: str, failures: int) -> None:
        """For `BreakerBoard.listener`: a breaker of this process opened or closed."""
        self.emit(breaker_changed(deployment, state, failures))

    def _recent(self, event: Event) -> bool:
        """True (and counted) if `event`'s dedupe key was accepted within `dedupe_seconds`; else
        remember the key as accepted now."""
        now = self.clock()
        last = self._seen.get(event.dedupe_key)
        if last is not None and now - last < self.dedupe_seconds:
            self._count(event.kind, "deduplicated")
            return True
        self._seen[event.dedupe_key] = now
        if len(self._seen) > 4 * self.queue.maxsize:
            self._forget(now)
        return False

    def _forget(self, now: float) -> None:
        """Forget keys past the interval; in a storm of distinct keys, keep only the newest (the
        memory stays bounded; dedupe of the oldest keys is what gives)."""
        seen = {key: at for key, at in self._seen.items() if now - at < self.dedupe_seconds}
        keep = 2 * self.queue.maxsize
        self._seen = seen if len(seen) <= keep else dict(sorted(seen.items(), key=lambda item: item[1])[-keep:])

    def _count(self, kind: str, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.metrics is not None:
            self.metrics.alerts.inc_at((kind, outcome))

    # -- the delivering side (the background task) -----------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(headers={"user-agent": "gaud-engine-alerts"})
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                hooks = [w for w in self.webhooks if w.wants(event.kind)]
                await asyncio.gather(*(self._deliver(w, event) for w in hooks))
            except Exception:  # a bug here must not end alerting for the life of the process
                log.exception("alert delivery failed unexpectedly")
            finally:
                self.queue.task_done()

    async def _deliver(self, webhook: Webhook, event: Event) -> None:
        body = render(event, webhook.format)
        why = ""
        for attempt in range(1, self.attempts + 1):
            retry, why = await self._post(webhook, event, body)
            if not why:
                self._count(event.kind, "delivered")
                return
            if not retry:
                break
            if attempt < self.attempts:
                await self.sleep(self.delay(attempt))
        self._count(event.kind, "failed")
        log.warning("alert %s to %s not delivered (%s, %d attempt(s)); given up", event.kind, webhook.where, why, attempt)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of backoff * 2**(attempt-1), capped."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.rng())

    async def _post(self, webhook: Webhook, event: Event, body: bytes) -> tuple[bool, str]:
        """One attempt: (worth retrying, why it failed), or (False, "") when delivered."""
        assert self._session is not None
        headers = {"content-type": "application/json", "x-gaud-event": event.kind}
        if webhook.secret is not None:
            timestamp = str(int(time.time()))
            headers["x-gaud-timestamp"] = timestamp
            headers["x-gaud-signature"] = sign(webhook.secret, timestamp, body)
        try:
            async with self._session.post(webhook.url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=webhook.timeout)) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return True, type(exc).__name__
        if 200 <= status < 300:
            return False, ""
        return status >= 500 or status in _RETRY_STATUSES, f"HTTP {status}"

    async def aclose(self, deadline: float = 5.0) -> None:
        """Deliver what is queued within `deadline` seconds, then stop (the rest is counted as dropped)."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), deadline)
        except TimeoutError:
            left = self.queue.qsize() + 1  # the one in delivery too
            self.counts["dropped"] += left
            log.warning("%d alert(s) not delivered within the %g s shutdown deadline", left, deadline)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._session is not None:
            await self._session.close()
