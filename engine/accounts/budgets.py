"""Budgets: a request's estimated cost is reserved against the daily and monthly limits of its
user and of the user's team (engine.accounts.teams) before the call, and settled with the real
cost after it. A request must fit every limit that applies; the refusal names which one."""

from __future__ import annotations

import asyncio
import calendar
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import BudgetExceeded
from .store import Principal, Store

if TYPE_CHECKING:
    from ..alerts.sink import AlertSink

__all__ = ["Budgets", "Reservation", "Scope", "budget_scopes", "crossed", "day_start", "month_start", "period_starts"]


def day_start(now: float) -> float:
    """Midnight UTC of the day containing `now`: budgets count days in UTC."""
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))


def month_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


#: The (day start, month start) of the last day asked for: both change only at midnight UTC.
_periods: list[tuple[float, float]] = [(math.inf, math.inf)]


def period_starts(now: float) -> tuple[float, float]:
    """`(day_start(now), month_start(now))`, computed once per day (~2 µs a pair otherwise, paid
    per budget scope per request)."""
    day, month = _periods[0]
    if not day <= now < day + 86400.0:  # UTC days are all 86400 s long (timegm has no leap seconds)
        day, month = _periods[0] = (day_start(now), month_start(now))
    return day, month


@dataclass(frozen=True)
class Scope:
    """Whose spend a request counts against: its user's, or its user's team's."""

    kind: str  # "user" or "team"
    id: int
    name: str
    daily: float | None
    monthly: float | None

    def limits(self) -> tuple[tuple[str, float | None], tuple[str, float | None]]:
        return ("daily", self.daily), ("monthly", self.monthly)

    def spent_since(self, store: Store, since: float) -> float:
        """What the audit log holds for this scope since `since`."""
        if self.kind == "team":
            return store.team_spent_since(self.id, since)
        return store.spent_since(self.id, since)


def budget_scopes(principal: Principal) -> tuple[Scope, ...]:
    """The user, then the team if any. A scope without limits is kept: its spend is still counted,
    so a limit set later starts from the truth."""
    if principal.user_id is None:
        return ()
    user = Scope("user", principal.user_id, principal.user_name, principal.budget_daily, principal.budget_monthly)
    if principal.team_id is None:
        return (user,)
    team = Scope("team", principal.team_id, principal.team_name or str(principal.team_id),
                 principal.team_budget_daily, principal.team_budget_monthly)
    return user, team


def warning_text(scopes: tuple[Scope, ...], spent: Callable[[Scope], tuple[float, float] | None],
                 warn_at: tuple[float, ...]) -> str | None:
    """'daily=83%, team monthly=91%' once a scope's spend passes a warning threshold, else None."""
    parts = []
    for scope in scopes:
        spend = spent(scope)
        if spend is None:
            continue
        prefix = "team " if scope.kind == "team" else ""
        for (label, limit), used in zip(scope.limits(), spend):
            if limit and any(used >= limit * t for t in warn_at):
                parts.append(f"{prefix}{label}={used / limit:.0%}")
    return ", ".join(parts) or None


def crossed(
    alerts: AlertSink, scope: Scope, starts: tuple[float, float], before: tuple[float, float],
    after: tuple[float, float], warn_at: tuple[float, ...],
) -> None:
    """Tell `alerts` of the scope's daily and monthly thresholds a settle crossed (spend moved from
    `before` to `after`, each (day, month), in the periods starting at `starts`)."""
    for i, (period, limit) in enumerate(scope.limits()):
        alerts.budget(scope.kind, scope.name, period, starts[i], limit, before[i], after[i], warn_at)


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
    #: The Redis keys reserved against (engine.accounts.shared); None in memory.
    keys: list[str] | None = None


@dataclass
class Budgets:
    """Per-user and per-team daily and monthly limits in USD.

    Spend is loaded from the audit log once per user or team and period, then kept in memory:
    every request reserves an estimate of its cost against its user and its team together (under
    one lock) and settles the real cost after, so concurrent requests cannot overrun any limit
    by more than one request's cost.
    """

    store: Store | None
    warn_at: tuple[float, ...] = (0.8,)
    clock: Callable[[], float] = time.time
    alerts: AlertSink | None = None  # told of thresholds crossed at settle
    _spend: dict[tuple[str, int], _Spend] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _load(self, scope: Scope) -> _Spend:
        now = self.clock()
        day, month = period_starts(now)
        spend = self._spend.get((scope.kind, scope.id))
        if spend is not None and spend.day_start == day and spend.month_start == month:
            return spend
        reserved = spend.reserved if spend is not None else 0.0
        if self.store is None:
            day_spent = month_spent = 0.0
        else:
            day_spent = await asyncio.to_thread(scope.spent_since, self.store, day)
            month_spent = await asyncio.to_thread(scope.spent_since, self.store, month)
        spend = _Spend(day, day_spent, month, month_spent, reserved)
        self._spend[(scope.kind, scope.id)] = spend
        return spend

    async def reserve(self, principal: Principal, estimate: float) -> Reservation:
        """Hold `estimate` USD against the user's and the team's limits, or raise BudgetExceeded."""
        if not principal.has_budget:
            return Reservation(principal, 0.0)
        scopes = budget_scopes(principal)
        async with self._lock:
            spends = [await self._load(scope) for scope in scopes]
            for scope, spend in zip(scopes, spends):
                for (label, limit), spent in zip(scope.limits(), (spend.day, spend.month)):
                    if limit is not None and (spent >= limit or spent + spend.reserved + estimate > limit):
                        raise BudgetExceeded.refused(label, limit, scope.name, spent, spend.reserved, estimate,
                                                     scope=scope.kind)
            for spend in spends:
                spend.reserved += estimate
        return Reservation(principal, estimate)

    def settle(self, reservation: Reservation, cost: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if not self._spend:  # no user's or team's spend loaded yet (no budget so far): nothing to count
            return
        for scope in budget_scopes(reservation.principal):
            spend = self._spend.get((scope.kind, scope.id))
            if spend is None:
                continue
            spend.reserved = max(0.0, spend.reserved - reservation.amount)
            before = (spend.day, spend.month)
            spend.day += cost
            spend.month += cost
            if self.alerts is not None:
                crossed(self.alerts, scope, (spend.day_start, spend.month_start), before, (spend.day, spend.month),
                        self.warn_at)

    def warning(self, principal: Principal) -> str | None:
        """'daily=83%' style text once spend passes a warning threshold, else None."""
        if not principal.has_budget:  # no limit to warn about: the common request stops here
            return None

        def spent(scope: Scope) -> tuple[float, float] | None:
            spend = self._spend.get((scope.kind, scope.id))
            return None if spend is None else (spend.day, spend.month)

        return warning_text(budget_scopes(principal), spent, self.warn_at)
