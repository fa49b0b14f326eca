"""Budgets: a request's estimated cost is reserved against the user's daily and monthly limits
before the call and settled with the real cost after it."""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import BudgetExceeded
from .store import Principal, Store

if TYPE_CHECKING:
    from ..alerts.sink import AlertSink

__all__ = ["Budgets", "Reservation", "crossed", "day_start", "month_start"]


def day_start(now: float) -> float:
    """Midnight UTC of the day containing `now`: budgets count days in UTC."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))


def month_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def crossed(
    alerts: AlertSink, principal: Principal, starts: tuple[float, float], before: tuple[float, float],
    after: tuple[float, float], warn_at: tuple[float, ...],
) -> None:
    """Tell `alerts` of the user's daily and monthly thresholds a settle crossed (spend moved from
    `before` to `after`, each (day, month), in the periods starting at `starts`)."""
    limits = (principal.budget_daily, principal.budget_monthly)
    for i, period in enumerate(("daily", "monthly")):
        alerts.budget("user", principal.user_name or "", period, starts[i], limits[i], before[i], after[i], warn_at)


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
    alerts: AlertSink | None = None  # told of thresholds crossed at settle
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
        if not principal.has_budget:
            return Reservation(principal, 0.0)
        assert principal.user_id is not None  # has_budget: a user with limits
        async with self._lock:
            spend = await self._load(principal.user_id)
            for label, limit, spent in (
                ("daily", principal.budget_daily, spend.day),
                ("monthly", principal.budget_monthly, spend.month),
            ):
                if limit is None:
                    continue
                if spent >= limit or spent + spend.reserved + estimate > limit:
                    raise BudgetExceeded.refused(label, limit, principal.user_name, spent, spend.reserved, estimate)
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
        day, month = spend.day, spend.month
        spend.day += cost
        spend.month += cost
        if self.alerts is not None:
            crossed(self.alerts, reservation.principal, (spend.day_start, spend.month_start), (day, month),
                    (spend.day, spend.month), self.warn_at)

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
