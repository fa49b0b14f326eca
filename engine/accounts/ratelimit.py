"""Token buckets for requests-per-minute and tokens-per-minute limits, in memory or in Redis.

A bucket starts full (capacity = `per_minute`), refills continuously at `per_minute / 60` per
second and never holds more than its capacity. A take of `amount` succeeds when the bucket holds
at least `amount`; otherwise nothing is taken and the Decision says how long to wait.

`take_many` is all-or-nothing: a request is charged against its requests bucket and its tokens
bucket together, and when either refuses neither is charged (a request refused for tokens must
not use up a request slot). `charge` takes unconditionally and may leave a bucket in debt: it is
for usage known only after the response (completion tokens), or a negative amount to refund an
estimate that was too high.

Why hand-written: PyPI's rate-limit libraries implement fixed or moving windows or leaky
buckets, none of them an all-or-nothing take over several buckets; and the Redis side must be
ONE atomic script (check every bucket, then charge every bucket) so that several gateway
instances share the same limits without races.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Decision",
    "Limit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "format_duration",
    "rate_limit_headers",
    "retry_after",
]

# Buckets live on this long past the moment they are full again (a missing bucket is a full one).
IDLE_EXPIRY = 120.0


@dataclass(frozen=True)
class Limit:
    """One bucket definition: `per_minute` is both the capacity and the refill per 60 s."""

    per_minute: float

    def __post_init__(self) -> None:
        if not (self.per_minute > 0 and math.isfinite(self.per_minute)):
            raise ValueError(f"a rate limit must be a positive number per minute, not {self.per_minute!r}")

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.per_minute / 60.0


@dataclass
class Decision:
    """The outcome of one bucket in a take.

    `allowed` is the outcome of the whole take: in `take_many` every Decision carries the same
    value. `retry_after` is this bucket's own wait (0 when it alone had enough), so the wait for
    a refused `take_many` is the largest of them (see `retry_after()`); buckets refill
    independently, so that is exact.

    An `amount` larger than the capacity can never be taken: it is refused with `retry_after`
    set to the time to fill the whole bucket from empty (60 s, more while the bucket is in
    debt), never 0, so a client that honours it does not retry in a tight loop. Callers should
    reject such a request outright (it cannot ever pass this limit).
    """

    allowed: bool
    limit: float
    remaining: float  # tokens left after this take (floored at 0)
    reset_seconds: float  # seconds until the bucket is full again
    retry_after: float  # seconds until `amount` could be taken (0 when allowed)


class RateLimiter(Protocol):
    async def take(self, key: str, limit: Limit, amount: float = 1.0) -> Decision: ...

    async def take_many(self, takes: Sequence[tuple[str, Limit, float]]) -> list[Decision]:
        """All-or-nothing: if any bucket refuses, none is charged. Keys must be distinct."""
        ...

    async def charge(self, key: str, limit: Limit, amount: float) -> Decision:
        """Take `amount` unconditionally (the bucket may go into debt; negative refunds)."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (a Redis connection); called once at shutdown."""
        ...


def _epsilon(limit: Limit) -> float:
    # Float refill can land a hair below an integer (100/60 * 0.6 = 0.99999...): waiting exactly
    # `retry_after` must be enough.
    return 1e-9 * max(1.0, limit.per_minute)


def _refill(tokens: float, since: float, now: float, limit: Limit) -> float:
    return min(limit.per_minute, tokens + max(0.0, now - since) * limit.rate)


def _decide(limit: Limit, tokens: float, amount: float, allowed: bool, *, charged: bool) -> Decision:
    """Build a Decision from the bucket level before the take (refilled to now)."""
    rate = limit.rate
    after = min(limit.per_minute, tokens - amount) if charged else tokens
    if charged or amount <= tokens + _epsilon(limit):
        wait = 0.0
    elif amount > limit.per_minute:
        wait = (limit.per_minute - min(tokens, 0.0)) / rate
    else:
        wait = (amount - tokens) / rate
    return Decision(
        allowed=allowed,
        limit=limit.per_minute,
        remaining=max(0.0, after),
        reset_seconds=max(0.0, (limit.per_minute - after) / rate),
        retry_after=wait,
    )


def _check_distinct(takes: Sequence[tuple[str, Limit, float]]) -> None:
    keys = [key for key, _, _ in takes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"take_many needs distinct keys, got {keys}")


def retry_after(decisions: Sequence[Decision | None]) -> float:
    """Seconds until every bucket of a refused take could be charged (0 when allowed)."""
    return max((d.retry_after for d in decisions if d is not None), default=0.0)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    full_at: float


class MemoryRateLimiter:
    """Buckets in this process. Every method runs without awaiting, so it is atomic in asyncio.

    Full buckets are forgotten (a missing bucket is a full one) by a sweep at most once per
    `IDLE_EXPIRY` seconds of the clock, so memory follows the number of active keys.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def _level(self, key: str, limit: Limit, now: float) -> float:
        bucket = self._buckets.get(key)
        return limit.per_minute if bucket is None else _refill(bucket.tokens, bucket.updated, now, limit)

    def _store(self, key: str, limit: Limit, tokens: float, now: float) -> None:
        bucket = self._buckets.get(key)
        updated = now if bucket is None else max(now, bucket.updated)
        full_at = updated + max(0.0, limit.per_minute - tokens) / limit.rate
        self._buckets[key] = _Bucket(min(tokens, limit.per_minute), updated, full_at)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_EXPIRY:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if b.full_at <= now]:
            del self._buckets[key]

    async def take(self, key: str, limit: Limit, amount: float = 1.0) -> Decision:
        return (await self.take_many([(key, limit, amount)]))[0]

    async def take_many(self, takes: Sequence[tuple[str, Limit, float]]) -> list[Decision]:
        _check_distinct(takes)
        now = self.clock()
        self._sweep(now)
        levels = [self._level(key, limit, now) for key, limit, _ in takes]
        allowed = all(amount <= level + _epsilon(limit) for (_, limit, amount), level in zip(takes, levels))
        if allowed:
            for (key, limit, amount), level in zip(takes, levels):
                self._store(key, limit, level - amount, now)
        return [_decide(limit, level, amount, allowed, charged=allowed) for (_, limit, amount), level in zip(takes, levels)]

    async def charge(self, key: str, limit: Limit, amount: float) -> Decision:
        now = self.clock()
        level = self._level(key, limit, now)
        self._store(key, limit, level - amount, now)
        return _decide(limit, level, amount, True, charged=True)

    async def aclose(self) -> None:
        return None


# KEYS: the buckets. ARGV[1]: now in seconds, or '' for the server's TIME. ARGV[2]: 'all' (charge
# every bucket only if every bucket has enough) or 'force' (charge regardless). Then per bucket:
# capacity, amount. Returns the allowed flag (0/1) and, per bucket, its level before the take as
# a string (a Lua number returned as-is would be truncated to an integer).
_TAKE_SCRIPT = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local force = ARGV[2] == 'force'
local n = #KEYS
local levels, stamps, caps, amounts = {}, {}, {}, {}
local allowed = 1
for i = 1, n do
  local cap = tonumber(ARGV[1 + 2 * i])
  local amount = tonumber(ARGV[2 + 2 * i])
  local rate = cap / 60
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level, stamp = cap, now
  if state[1] then
    local ts = tonumber(state[2])
    local elapsed = now - ts
    if elapsed < 0 then elapsed = 0; stamp = ts end
    level = math.min(cap, tonumber(state[1]) + elapsed * rate)
  end
  levels[i], stamps[i], caps[i], amounts[i] = level, stamp, cap, amount
  if amount > level + 1e-9 * math.max(1, cap) then allowed = 0 end
end
if force then allowed = 1 end
local out = {allowed}
for i = 1, n do
  if allowed == 1 then
    local cap, rate = caps[i], caps[i] / 60
    local left = math.min(cap, levels[i] - amounts[i])
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', left), 'ts', string.format('%.17g', stamps[i]))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - left) / rate * 1000 + tonumber(ARGV[3 + 2 * n])))
  end
  out[i + 1] = string.format('%.17g', levels[i])
end
return out
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every gateway instance that uses the same server and prefix.

    One Lua script (EVALSHA, loaded on first use) checks and charges all buckets of a take
    atomically. Time is the server's TIME unless a `clock` is given; then its value is passed to
    the script, which is how tests control time (instances on several hosts should use the
    server's clock). Idle buckets expire `IDLE_EXPIRY` seconds after they are full again.

    Redis errors propagate: whether to fail open or closed is the caller's decision. On Redis
    Cluster the keys of one `take_many` must share a hash tag (e.g. "{user:7}:rpm").
    """

    def __init__(self, url_or_client: Any, clock: Callable[[], float] | None = None, prefix: str = "gaud:rl:") -> None:
        from ._redis import connect

        self.client, self._owns_client = connect(url_or_client)
        self.clock = clock
        self.prefix = prefix
        self._script = self.client.register_script(_TAKE_SCRIPT)

    async def _run(self, takes: Sequence[tuple[str, Limit, float]], mode: str) -> list[Decision]:
        _check_distinct(takes)
        if not takes:
            return []
        args: list[str] = ["" if self.clock is None else repr(float(self.clock())), mode]
        for _, limit, amount in takes:
            args += [repr(float(limit.per_minute)), repr(float(amount))]
        args.append(str(int(IDLE_EXPIRY * 1000)))
        reply = await self._script(keys=[self.prefix + key for key, _, _ in takes], args=args)
        allowed = int(reply[0]) == 1
        return [
            _decide(limit, float(level), amount, allowed, charged=allowed)
            for (_, limit, amount), level in zip(takes, reply[1:])
        ]

    async def take(self, key: str, limit: Limit, amount: float = 1.0) -> Decision:
        return (await self._run([(key, limit, amount)], "all"))[0]

    async def take_many(self, takes: Sequence[tuple[str, Limit, float]]) -> list[Decision]:
        return await self._run(takes, "all")

    async def charge(self, key: str, limit: Limit, amount: float) -> Decision:
        return (await self._run([(key, limit, amount)], "force"))[0]

    async def aclose(self) -> None:
        """Close the connection pool if this limiter created it from a URL."""
        if self._owns_client:
            await self.client.aclose()


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "0s", "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))  # round up: a client waiting this long is never early
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def rate_limit_headers(requests: Decision | None, tokens: Decision | None) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, for the buckets that apply.

    Remaining is rounded down to a whole number, as OpenAI sends it.
    """
    headers: dict[str, str] = {}
    for suffix, decision in (("requests", requests), ("tokens", tokens)):
        if decision is None:
            continue
        headers[f"x-ratelimit-limit-{suffix}"] = _number(decision.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(math.floor(decision.remaining + 1e-9))
        headers[f"x-ratelimit-reset-{suffix}"] = format_duration(decision.reset_seconds)
    return headers
