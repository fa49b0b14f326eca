"""Budgets several gateway instances share through Redis (breakers: pipeline/shared_breakers.py).

Per user and period, Redis holds the spend (seeded once from the audit log) and the sum
of open reservations; one Lua script checks and reserves atomically, another settles. A
reservation counter left by a crashed instance expires after `reservation_ttl` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceeded
from ._redis import connect
from .budgets import Reservation, crossed, day_start, month_start
from .store import Principal, Store

if TYPE_CHECKING:
    from ..alerts.sink import AlertSink

__all__ = ["RedisBudgets"]

_RESERVE = """
-- KEYS: spent_day, reserved_day, spent_month, reserved_month
-- ARGV: limit_day (or -1), limit_month (or -1), estimate, reservation_ttl_ms, period_ttl_ms
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local estimate = tonumber(ARGV[3])
for i = 1, 2 do
  local limit = limits[i]
  if limit >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local reserved = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    if spent >= limit or spent + reserved + estimate > limit then
      return {0, i, tostring(spent), tostring(reserved)}
    end
  end
end
for i = 1, 2 do
  redis.call('INCRBYFLOAT', KEYS[2 * i], estimate)
  redis.call('PEXPIRE', KEYS[2 * i], ARGV[4])
end
return {1, 0, redis.call('GET', KEYS[1]) or '0', redis.call('GET', KEYS[3]) or '0'}
"""

_SETTLE = """
-- KEYS: spent_day, reserved_day, spent_month, reserved_month ; ARGV: estimate, cost, period_ttl_ms
-- Returns the spend after: {day, month} (alerts compare it with the spend before).
local spent = {}
for i = 1, 2 do
  local reserved = tonumber(redis.call('INCRBYFLOAT', KEYS[2 * i], -tonumber(ARGV[1])))
  if reserved < 0 then redis.call('SET', KEYS[2 * i], '0') end
  spent[i] = redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[3])
end
return spent
"""

#: How long a day's or month's spend key lives in Redis: past the longest period (a month).
_PERIOD_KEY_TTL_MS = 40 * 86400 * 1000


class RedisBudgets:
    """The same interface as `budgets.Budgets`, with spend and reservations in Redis."""

    def __init__(
        self,
        url_or_client: Any,
        store: Store | None,
        *,
        warn_at: tuple[float, ...] = (0.8,),
        clock: Callable[[], float] = time.time,
        prefix: str = "gaud:budget:",
        reservation_ttl: float = 600.0,
    ) -> None:
        self.redis, _ = connect(url_or_client)
        self.store = store
        self.warn_at = warn_at
        self.clock = clock
        self.prefix = prefix
        self.reservation_ttl = reservation_ttl
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._last_spend: dict[int, tuple[float, float]] = {}
        self.alerts: AlertSink | None = None  # told of thresholds crossed at settle

    def _keys(self, user_id: int, now: float) -> list[str]:
        day, month = int(day_start(now)), int(month_start(now))
        base = f"{self.prefix}{user_id}"
        return [f"{base}:day:{day}:spent", f"{base}:day:{day}:reserved",
                f"{base}:month:{month}:spent", f"{base}:month:{month}:reserved"]

    async def _seed(self, user_id: int, keys: list[str], now: float) -> None:
        """First use of a period in Redis: start from what the audit log already holds."""
        for key, since in ((keys[0], day_start(now)), (keys[2], month_start(now))):
            if await self.redis.exists(key):
                continue
            spent = await asyncio.to_thread(self.store.spent_since, user_id, since) if self.store else 0.0
            await self.redis.set(key, repr(spent), nx=True, px=_PERIOD_KEY_TTL_MS)

    async def reserve(self, principal: Principal, estimate: float) -> Reservation:
        user_id = principal.user_id
        if user_id is None or not principal.has_budget:  # has_budget implies a user; mypy cannot see it
            return Reservation(principal, 0.0)
        now = self.clock()
        keys = self._keys(user_id, now)
        await self._seed(user_id, keys, now)
        daily = principal.budget_daily if principal.budget_daily is not None else -1
        monthly = principal.budget_monthly if principal.budget_monthly is not None else -1
        allowed, which, first, second = await self._reserve(
            keys=keys, args=[daily, monthly, estimate, int(self.reservation_ttl * 1000), _PERIOD_KEY_TTL_MS]
        )
        if not int(allowed):
            label, limit = ("daily", daily) if int(which) == 1 else ("monthly", monthly)
            raise BudgetExceeded.refused(label, limit, principal.user_name, float(first), float(second), estimate)
        self._last_spend[user_id] = (float(first), float(second))
        reservation = Reservation(principal, estimate)
        reservation.keys = keys  # type: ignore[attr-defined]
        return reservation

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Settle in the background (the caller is on the response path)."""
        if reservation.settled or reservation.principal.user_id is None or not hasattr(reservation, "keys"):
            return
        reservation.settled = True
        asyncio.get_running_loop().create_task(self.settle_now(reservation, cost))

    async def settle_now(self, reservation: Reservation, cost: float) -> None:
        keys = reservation.keys  # type: ignore[attr-defined]
        day, month = await self._settle(keys=keys, args=[reservation.amount, cost, _PERIOD_KEY_TTL_MS])
        if self.alerts is not None and cost > 0:  # INCRBYFLOAT is atomic: one instance sees each crossing
            after = (float(day), float(month))
            starts = (float(keys[0].split(":")[-2]), float(keys[2].split(":")[-2]))
            crossed(self.alerts, reservation.principal, starts, (after[0] - cost, after[1] - cost), after, self.warn_at)

    def warning(self, principal: Principal) -> str | None:
        spend = self._last_spend.get(principal.user_id) if principal.user_id is not None else None
        if spend is None:
            return None
        parts = []
        for label, limit, spent in (("daily", principal.budget_daily, spend[0]), ("monthly", principal.budget_monthly, spend[1])):
            if limit and any(spent >= limit * t for t in self.warn_at):
                parts.append(f"{label}={spent / limit:.0%}")
        return ", ".join(parts) or None

    async def aclose(self) -> None:
        await self.redis.aclose()
