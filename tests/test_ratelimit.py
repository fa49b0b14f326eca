"""Token buckets: the same behaviour tests run in memory and, when GAUD_TEST_REDIS_URL is set,
against Redis (time comes from an injected clock in both, so nothing sleeps)."""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from engine.accounts.ratelimit import (
    Decision,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    format_duration,
    rate_limit_headers,
    retry_after,
)

REDIS_URL = os.environ.get("GAUD_TEST_REDIS_URL")
T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """One event loop per test, so a Redis connection pool lives and closes in the same loop."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and not REDIS_URL:
        pytest.skip("GAUD_TEST_REDIS_URL is not set")
    return str(request.param)


@pytest.fixture
def make(backend: str, run: Run[Any], clock: Clock) -> Iterator[Callable[..., Any]]:
    """make(clock=...) -> a limiter; Redis ones share one test-unique prefix, removed afterwards."""
    if backend == "memory":
        yield lambda clock=clock: MemoryRateLimiter(clock=clock)
        return
    prefix = f"gaud:test:{uuid.uuid4().hex}:"
    made: list[RedisRateLimiter] = []

    def factory(clock: Callable[[], float] | None = clock) -> RedisRateLimiter:
        limiter = RedisRateLimiter(REDIS_URL, clock=clock, prefix=prefix)
        made.append(limiter)
        return limiter

    yield factory

    async def cleanup() -> None:
        for limiter in made:
            async for key in limiter.client.scan_iter(match=prefix + "*"):
                await limiter.client.delete(key)
            await limiter.aclose()

    run(cleanup())


RPM = Limit(60)  # 1 per second
TPM = Limit(6000)  # 100 per second


def test_bucket_starts_full_and_refuses_past_capacity(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    first = run(rl.take("u1", Limit(3)))
    assert first == Decision(allowed=True, limit=3, remaining=2, reset_seconds=20.0, retry_after=0.0)
    assert run(rl.take("u1", Limit(3))).remaining == 1
    assert run(rl.take("u1", Limit(3))).remaining == 0
    refused = run(rl.take("u1", Limit(3)))
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(20.0)
    assert refused.reset_seconds == pytest.approx(60.0)


def test_refills_at_the_right_rate(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    assert run(rl.take("k", RPM, 60)).remaining == 0
    assert not run(rl.take("k", RPM)).allowed
    clock.advance(10)  # 10 tokens back
    decision = run(rl.take("k", RPM, 10))
    assert decision.allowed and decision.remaining == pytest.approx(0)
    assert not run(rl.take("k", RPM)).allowed


def test_partial_refill(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    run(rl.take("k", TPM, 6000))
    clock.advance(2.5)  # 250 tokens back
    refused = run(rl.take("k", TPM, 300))
    assert not refused.allowed
    assert refused.remaining == pytest.approx(250)
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.reset_seconds == pytest.approx(57.5)
    taken = run(rl.take("k", TPM, 200))
    assert taken.allowed and taken.remaining == pytest.approx(50)
    assert taken.reset_seconds == pytest.approx(59.5)


def test_never_refills_above_capacity(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    run(rl.take("k", Limit(10), 5))
    clock.advance(3600)
    decision = run(rl.take("k", Limit(10), 1))
    assert decision.remaining == pytest.approx(9)
    assert not run(rl.take("k", Limit(10), 10)).allowed


def test_retry_after_is_exact(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    limit = Limit(100)  # 5/3 per second: refill times are not round numbers
    run(rl.take("k", limit, 100))
    refused = run(rl.take("k", limit, 7))
    assert refused.retry_after == pytest.approx(7 * 60 / 100)
    clock.advance(refused.retry_after * 0.999)
    assert not run(rl.take("k", limit, 7)).allowed
    clock.advance(refused.retry_after * 0.001)
    assert run(rl.take("k", limit, 7)).allowed


def test_amount_over_capacity_waits_a_whole_bucket(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    refused = run(rl.take("k", Limit(10), 11))
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(60.0)
    assert refused.remaining == 10  # nothing was charged
    assert run(rl.take("k", Limit(10), 10)).allowed


def test_take_many_all_or_nothing(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    req, tok = run(rl.take_many([("u:rpm", RPM, 1), ("u:tpm", Limit(1000), 800)]))
    assert req.allowed and tok.allowed
    assert (req.remaining, tok.remaining) == (59, 200)

    # The token bucket refuses: the request bucket must not be charged.
    req, tok = run(rl.take_many([("u:rpm", RPM, 1), ("u:tpm", Limit(1000), 500)]))
    assert not req.allowed and not tok.allowed
    assert req.remaining == 59 and req.retry_after == 0
    assert tok.remaining == pytest.approx(200) and tok.retry_after == pytest.approx(18.0)
    assert retry_after([req, tok]) == pytest.approx(18.0)
    assert run(rl.take("u:rpm", RPM)).remaining == 58  # 59 before this take: the refusal took nothing

    clock.advance(18)
    req, tok = run(rl.take_many([("u:rpm", RPM, 1), ("u:tpm", Limit(1000), 500)]))
    assert req.allowed and tok.allowed
    assert tok.remaining == pytest.approx(0)


def test_take_many_refused_by_the_request_bucket(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    run(rl.take("r", Limit(1)))
    req, tok = run(rl.take_many([("r", Limit(1), 1), ("t", TPM, 10)]))
    assert not req.allowed and not tok.allowed
    assert req.retry_after == pytest.approx(60.0) and tok.retry_after == 0
    assert run(rl.take("t", TPM, 6000)).allowed  # still full


def test_take_many_needs_distinct_keys(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    with pytest.raises(ValueError, match="distinct"):
        run(rl.take_many([("k", RPM, 1), ("k", TPM, 1)]))
    assert run(rl.take_many([])) == []


def test_keys_are_isolated(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    run(rl.take("alice", Limit(2), 2))
    assert not run(rl.take("alice", Limit(2))).allowed
    assert run(rl.take("bob", Limit(2))).allowed
    assert run(rl.take("alice:tpm", Limit(2))).allowed


def test_charge_goes_into_debt_and_refunds(make: Callable[..., Any], run: Run[Any], clock: Clock) -> None:
    rl = make()
    limit = Limit(600)  # 10 per second
    charged = run(rl.charge("k", limit, 700))  # usage known after the response
    assert charged.allowed and charged.remaining == 0 and charged.retry_after == 0
    assert charged.reset_seconds == pytest.approx(70.0)
    refused = run(rl.take("k", limit, 10))
    assert not refused.allowed and refused.retry_after == pytest.approx(11.0)
    refunded = run(rl.charge("k", limit, -150))
    assert refunded.remaining == pytest.approx(50)
    assert run(rl.charge("k", limit, -10_000)).remaining == 600  # never above capacity
    clock.advance(1)
    assert run(rl.take("k", limit, 600)).allowed


def test_instances_share_one_store(make: Callable[..., Any], run: Run[Any], backend: str) -> None:
    """Two gateway instances on one Redis share limits; in memory, one limiter is one store."""
    a = make()
    b = make() if backend == "redis" else a
    run(a.take("shared", Limit(3), 2))
    assert run(b.take("shared", Limit(3))).allowed
    assert not run(a.take("shared", Limit(3))).allowed


def test_concurrent_takes_never_overrun(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()

    async def burst() -> list[Decision]:
        return list(await asyncio.gather(*(rl.take_many([("c:rpm", Limit(10), 1), ("c:tpm", Limit(100), 7)]) for _ in range(40))))

    results = run(burst())
    assert sum(pair[0].allowed for pair in results) == 10  # 10 requests; tokens allow 14


def test_memory_forgets_full_buckets(clock: Clock, run: Run[Any]) -> None:
    rl = MemoryRateLimiter(clock=clock)
    run(rl.take("idle", RPM, 30))
    run(rl.take("busy", RPM, 60))
    clock.advance(45)  # idle is full again; busy is not
    run(rl.take("other", RPM))
    clock.advance(100)
    run(rl.take("busy", RPM, 60))  # triggers the sweep
    assert "idle" not in rl._buckets and "other" not in rl._buckets and "busy" in rl._buckets


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_buckets_expire_two_minutes_after_full(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make()
    run(rl.take("exp", RPM, 30))  # full again in 30 s
    ttl_ms = run(rl.client.pttl(rl.prefix + "exp"))
    assert 149_000 < ttl_ms <= 150_000


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_uses_server_time_without_a_clock(make: Callable[..., Any], run: Run[Any]) -> None:
    rl = make(clock=None)
    assert rl.clock is None
    decisions = [run(rl.take("srv", Limit(3))) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert 19.0 < decisions[-1].retry_after <= 20.0


def test_limit_must_be_positive() -> None:
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            Limit(bad)


def test_headers() -> None:
    req = Decision(allowed=True, limit=60, remaining=59, reset_seconds=1.0, retry_after=0)
    tok = Decision(allowed=True, limit=150000, remaining=149_984.7, reset_seconds=0.0061, retry_after=0)
    assert rate_limit_headers(req, tok) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "7ms",
    }
    assert rate_limit_headers(None, None) == {}
    assert set(rate_limit_headers(req, None)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert rate_limit_headers(None, Decision(False, 2.5, 0.0, 3.0, 1.0))["x-ratelimit-limit-tokens"] == "2.5"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-1, "0s"), (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (59.999, "59.999s"),
     (60, "1m0s"), (360, "6m0s"), (61.25, "1m1.25s"), (3723, "1h2m3s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_from_a_real_take(run: Run[Any], clock: Clock) -> None:
    rl = MemoryRateLimiter(clock=clock)
    req, tok = run(rl.take_many([("h:rpm", Limit(60), 1), ("h:tpm", Limit(60_000), 6000)]))
    assert rate_limit_headers(req, tok) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "54000",
        "x-ratelimit-reset-tokens": "6s",
    }
