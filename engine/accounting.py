"""Budgets (reserve before the call, settle after) and the audit log writer (batched, off the
hot path, flushed on shutdown)."""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import BudgetExceeded
from .store import Principal, Store

__all__ = ["AuditWriter", "Budgets", "Reservation", "day_start", "month_start"]

log = logging.getLogger("gaud.accounting")


def day_start(now: float) -> float:
    """Midnight UTC of the day containing `now`: budgets count days in UTC."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))


def month_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


@dataclass
class _Spend:
    day_start: float
    day: float
    month_start: float
    month: float
    reserved: float = 0.0


@dataclass
class Reservation:
    principal: Principal
    amount: float
    settled: bool = False


@dataclass
class Budgets:
    """Per-user daily and monthly limits in USD.

    Spend is loaded from the audit log once per user and period, then kept in memory: every
    request reserves an estimate of its cost first and settles the real cost after, so
    concurrent requests cannot overrun a limit by more than one request's cost.
    """

    store: Store | None
    warn_at: tuple[float, ...] = (0.8,)
    clock: Callable[[], float] = time.time
    _spend: dict[int, _Spend] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _load(self, user_id: int) -> _Spend:
        now = self.clock()
        day, month = day_start(now), month_start(now)
        spend = self._spend.get(user_id)
        if spend is not None and spend.day_start == day and spend.month_start == month:
            return spend
        reserved = spend.reserved if spend is not None else 0.0
        if self.store is None:
            day_spent = month_spent = 0.0
        else:
            day_spent = await asyncio.to_thread(self.store.spent_since, user_id, day)
            month_spent = await asyncio.to_thread(self.store.spent_since, user_id, month)
        spend = _Spend(day, day_spent, month, month_spent, reserved)
        self._spend[user_id] = spend
        return spend

    async def reserve(self, principal: Principal, estimate: float) -> Reservation:
        """Hold `estimate` USD against the user's limits, or raise BudgetExceeded."""
        if principal.user_id is None or (principal.budget_daily is None and principal.budget_monthly is None):
            return Reservation(principal, 0.0)
        async with self._lock:
            spend = await self._load(principal.user_id)
            for label, limit, spent in (
                ("daily", principal.budget_daily, spend.day),
                ("monthly", principal.budget_monthly, spend.month),
            ):
                if limit is None:
                    continue
                if spent >= limit or spent + spend.reserved + estimate > limit:
                    raise BudgetExceeded(
                        f"The {label} budget of ${limit:.2f} for user '{principal.user_name}' is spent "
                        f"(${spent:.4f} used, ${spend.reserved:.4f} reserved by requests in flight)."
                    )
            spend.reserved += estimate
        return Reservation(principal, estimate)

    def settle(self, reservation: Reservation, cost: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        user_id = reservation.principal.user_id
        spend = self._spend.get(user_id) if user_id is not None else None
        if spend is None:
            return
        spend.reserved = max(0.0, spend.reserved - reservation.amount)
        spend.day += cost
        spend.month += cost

    def warning(self, principal: Principal) -> str | None:
        """'daily=83%' style text once spend passes a warning threshold, else None."""
        spend = self._spend.get(principal.user_id) if principal.user_id is not None else None
        if spend is None:
            return None
        parts = []
        for label, limit, spent in (("daily", principal.budget_daily, spend.day), ("monthly", principal.budget_monthly, spend.month)):
            if limit and any(spent >= limit * t for t in self.warn_at):
                parts.append(f"{label}={spent / limit:.0%}")
        return ", ".join(parts) or None


class AuditWriter:
    """Queues audit records and writes them in batches from a background task."""

    def __init__(self, store: Store, *, batch_size: int = 500, max_delay: float = 0.2, max_queue: int = 50_000) -> None:
        self.store = store
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def add(self, record: dict[str, Any]) -> None:
        """Queue one record; waits only if the database has fallen far behind (nothing is dropped)."""
        await self.queue.put(record)

    async def _run(self) -> None:
        # One wake-up per batch, not per record: wait for the first record, give the rest of the
        # batch `max_delay` to arrive, then take everything queued (no task per record).
        while True:
            first = await self.queue.get()
            batch: list[dict[str, Any]] = []
            stop = first is None
            if not stop:
                batch.append(first)  # type: ignore[arg-type]
                if self.queue.qsize() < self.batch_size:  # a full batch waiting is written at once
                    await asyncio.sleep(self.max_delay)
            while not stop and not self.queue.empty() and len(batch) < self.batch_size:
                item = self.queue.get_nowait()
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                await self._write(batch)
            if stop:
                return

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        while True:
            try:
                self.written += await asyncio.to_thread(self.store.write_audit, batch)
                return
            except Exception:  # a database hiccup must not lose records: retry
                log.exception("audit write failed; retrying in 1 s")
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Write everything queued so far, then stop."""
        if self._task is not None:
            await self.queue.put(None)
            await self._task
            self._task = None
