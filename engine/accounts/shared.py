"""Budgets several gateway instances share through Redis (breakers: pipeline/shared_breakers.py).

Per user, per team and per period, Redis holds the spend (seeded once from the audit log) and the
sum of open reservations; one Lua script checks every limit of a request (its user's and its
team's) and reserves against all of them atomically, another settles. A reservation counter left
by a crashed instance expires after `reservation_ttl` seconds. A request to which no budget applies
reserves nothing, but its cost is still added to its scopes' spend keys that exist (as the
in-memory Budgets adds it to spend it loaded): a budget cleared and restored within a period must
count what was spent in between, and an existing key is never seeded again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceeded
from ._redis import connect
from .budgets import Reservation, Scope, budget_scopes, crossed, day_start, month_start, period_starts, warning_text
from .store import Principal, Store

if TYPE_CHECKING:
    from ..alerts.sink import AlertSink

__all__ = ["RedisBudgets"]

_RESERVE = """
-- KEYS: per budget (the user's, then the team's): spent_day, reserved_day, spent_month, reserved_month
-- ARGV: per budget: limit_day (or -1), limit_month (or -1); then estimate, reservation_ttl_ms
local n = #KEYS / 4
local estimate = tonumber(ARGV[2 * n + 1])
for b = 0, n - 1 do
  for i = 1, 2 do
    local limit = tonumber(ARGV[2 * b + i])
    if limit >= 0 then
      local spent = tonumber(redis.call('GET', KEYS[4 * b + 2 * i - 1]) or '0')
      local reserved = tonumber(redis.call('GET', KEYS[4 * b + 2 * i]) or '0')
      if spent >= limit or spent + reserved + estimate > limit then
        return {0, 2 * b + i, tostring(spent), tostring(reserved)}
      end
    end
  end
end
local out = {1, 0}
for b = 0, n - 1 do
  for i = 1, 2 do
    redis.call('INCRBYFLOAT', KEYS[4 * b + 2 * i], estimate)
    redis.call('PEXPIRE', KEYS[4 * b + 2 * i], ARGV[2 * n + 2])
    out[#out + 1] = redis.call('GET', KEYS[4 * b + 2 * i - 1]) or '0'
  end
end
return out
"""

_SETTLE = """
-- KEYS: (spent, reserved) pairs ; ARGV: estimate, cost, period_ttl_ms
-- Returns the spend after, per pair (alerts compare it with the spend before).
local spent = {}
for i = 1, #KEYS / 2 do
  local reserved = tonumber(redis.call('INCRBYFLOAT', KEYS[2 * i], -tonumber(ARGV[1])))
  if reserved < 0 then redis.call('SET', KEYS[2 * i], '0') end
  spent[i] = redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[3])
end
return spent
"""

_COUNT = """
-- KEYS: spend keys ; ARGV: cost
-- A request no budget applies to: add its cost to each key that exists. A missing key stays
-- missing, so that it is seeded from the audit log when a budget applies again.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], ARGV[1]) end
end
return 0
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
        self._count = self.redis.register_script(_COUNT)
        self._last_spend: dict[tuple[str, int], tuple[float, float]] = {}
        self.alerts: AlertSink | None = None  # told of thresholds crossed at settle

    def _keys(self, scope: Scope, now: float) -> list[str]:
        day_at, month_at = period_starts(now)
        day, month = int(day_at), int(month_at)
        # A user's keys keep the names of the releases before teams (instances share them while upgrading).
        base = f"{self.prefix}{scope.id}" if scope.kind == "user" else f"{self.prefix}team:{scope.id}"
        return [f"{base}:day:{day}:spent", f"{base}:day:{day}:reserved",
                f"{base}:month:{month}:spent", f"{base}:month:{month}:reserved"]

    async def _seed(self, scope: Scope, keys: list[str], now: float) -> None:
        """First use of a period in Redis: start from what the audit log already holds."""
        for key, since in ((keys[0], day_start(now)), (keys[2], month_start(now))):
            if await self.redis.exists(key):
                continue
            spent = await asyncio.to_thread(scope.spent_since, self.store, since) if self.store else 0.0
            await self.redis.set(key, repr(spent), nx=True, px=_PERIOD_KEY_TTL_MS)

    async def reserve(self, principal: Principal, estimate: float) -> Reservation:
        scopes = budget_scopes(principal)
        if not scopes:
            return Reservation(principal, 0.0)
        now = self.clock()
        if not principal.has_budget:  # nothing to check or hold: settle only counts into existing keys
            return Reservation(principal, 0.0, keys=[key for scope in scopes for key in self._keys(scope, now)])
        keys: list[str] = []
        limits: list[float] = []
        for scope in scopes:
            scope_keys = self._keys(scope, now)
            await self._seed(scope, scope_keys, now)
            keys += scope_keys
            limits += [limit if limit is not None else -1 for _, limit in scope.limits()]
        reply = await self._reserve(keys=keys, args=[*limits, estimate, int(self.reservation_ttl * 1000)])
        if not int(reply[0]):
            which = int(reply[1]) - 1
            scope, (label, _) = scopes[which // 2], scopes[which // 2].limits()[which % 2]
            raise BudgetExceeded.refused(label, limits[which], scope.name, float(reply[2]), float(reply[3]), estimate,
                                         scope=scope.kind)
        spent = [float(v) for v in reply[2:]]
        for i, scope in enumerate(scopes):
            self._last_spend[(scope.kind, scope.id)] = (spent[2 * i], spent[2 * i + 1])
        return Reservation(principal, estimate, keys=keys)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Settle in the background (the caller is on the response path)."""
        if reservation.settled or reservation.keys is None:
            return
        reservation.settled = True
        if reservation.principal.has_budget or cost > 0:
            asyncio.get_running_loop().create_task(self.settle_now(reservation, cost))

    async def settle_now(self, reservation: Reservation, cost: float) -> None:
        keys = reservation.keys or []
        if not reservation.principal.has_budget:
            if cost > 0:
                await self._count(keys=keys[0::2], args=[cost])  # the spend keys; nothing was reserved
            return
        spent = await self._settle(keys=keys, args=[reservation.amount, cost, _PERIOD_KEY_TTL_MS])
        if self.alerts is None or cost <= 0:  # INCRBYFLOAT is atomic: one instance sees each crossing
            return
        for i, scope in enumerate(budget_scopes(reservation.principal)):
            after = (float(spent[2 * i]), float(spent[2 * i + 1]))
            starts = (float(keys[4 * i].split(":")[-2]), float(keys[4 * i + 2].split(":")[-2]))
            crossed(self.alerts, scope, starts, (after[0] - cost, after[1] - cost), after, self.warn_at)

    def warning(self, principal: Principal) -> str | None:
        if not principal.has_budget:
            return None
        return warning_text(budget_scopes(principal), lambda s: self._last_spend.get((s.kind, s.id)), self.warn_at)

    async def aclose(self) -> None:
        await self.redis.aclose()
