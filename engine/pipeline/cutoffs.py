"""Cutting a task at a deadline, as `asyncio.timeout_at` does, for many tasks with one loop timer.

`asyncio.timeout_at` arms a loop timer per use (uvloop: a libuv timer started and closed each
time), ~4 µs an attempt. Here the deadlines of every attempt in flight on a loop sit in one heap
and the loop's single timer is set for the earliest: an attempt whose deadline is later than one
already armed (attempts with the same timeout starting one after another: the usual case) arms
nothing. A deadline that passes cancels its task exactly as `asyncio.timeout_at` would (the
same `cancel`/`uncancel` bookkeeping), at the same moment. Deadlines of attempts already over
are dropped when they come up, or all at once when they outnumber the live ones.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from typing import Any

__all__ = ["Cut", "Cutoffs", "cutoffs"]

#: Past this many heap entries, ended ones are swept once they are more than the live ones.
_COMPACT_AT = 64


class Cut:
    """One task's deadline: `fired` once the deadline cancelled the task."""

    __slots__ = ("cancelling", "done", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()  # cancellations requested before this deadline
        self.fired = False
        self.done = False

    def expired(self, exc: BaseException | None) -> bool:
        """Called once as the guarded await ends (`exc`: what it raised): whether this deadline is
        what ended it, so the caller raises its timeout (asyncio.Timeout.__aexit__'s rule)."""
        if not self.fired:
            return False
        return self.task.uncancel() <= self.cancelling and isinstance(exc, asyncio.CancelledError)


class Cutoffs:
    """The deadlines on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Cut]] = []
        self._order = itertools.count()
        self._live = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf

    def add(self, when: float) -> Cut:
        """Cancel the current task at `when` (loop time) unless `end` is called first."""
        task = asyncio.current_task(self.loop)
        assert task is not None, "a deadline guards a task"
        cut = Cut(task)
        heapq.heappush(self._heap, (when, next(self._order), cut))
        self._live += 1
        if when < self._armed:
            self._arm(when)
        return cut

    def end(self, cut: Cut) -> None:
        """The guarded await is over: its deadline no longer applies."""
        if cut.done:
            return
        cut.done = True
        self._live -= 1
        heap = self._heap
        if len(heap) > _COMPACT_AT and len(heap) > 2 * self._live:
            heap[:] = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # Every deadline up to the one the timer was set for is due, even if the loop's clock reads
        # a hair earlier (as asyncio.Timeout, which does not look at the clock when its timer fires).
        due = max(self._armed, self.loop.time())
        self._handle, self._armed = None, math.inf
        heap = self._heap
        while heap and heap[0][0] <= due:
            cut = heapq.heappop(heap)[2]
            if not cut.done:
                cut.fired = True
                cut.task.cancel()
        while heap and heap[0][2].done:  # ended ones on top would only fire for nothing
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Cutoffs] = weakref.WeakKeyDictionary()


def cutoffs(loop: asyncio.AbstractEventLoop) -> Cutoffs:
    """The deadlines of `loop`, made on first use."""
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Cutoffs(loop)
    return found
