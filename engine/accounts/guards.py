"""Per-key rate limits and the response cache policy, in front of the gateway.

Rate limits are token buckets (requests and tokens per minute) per API key, from config defaults
and per-user settings; in-process by default, shared through Redis when `redis.url` is set.
The cache is opt-in per request (`x-gaud-cache: on`, `cache-control: max-age=N`, or a `cache`
field in the body) or per alias (routes.yaml `cache:`), scoped to the user unless the alias
shares it. Only non-streaming replies are cached.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RateLimited
from .cache import ResponseCache, cache_key
from .inflight import Slot
from .ratelimit import Decision, Limit, RateLimiter, rate_limit_headers, retry_after
from .store import Principal

__all__ = ["Admission", "CachePlan", "Guards"]

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass
class Admission:
    headers: dict[str, str]
    tokens_key: str | None = None
    tokens_limit: Limit | None = None
    tokens_taken: float = 0.0
    #: Its place among the requests in flight (engine.accounts.inflight), given back at settle.
    slot: Slot | None = None


@dataclass(frozen=True)
class CachePlan:
    key: str
    ttl: float


class Guards:
    def __init__(
        self,
        limiter: RateLimiter,
        cache: ResponseCache,
        *,
        key_rpm: float | None = None,
        key_tpm: float | None = None,
        default_ttl: float = 600.0,
    ) -> None:
        self.limiter = limiter
        self.cache = cache
        self.key_rpm = key_rpm
        self.key_tpm = key_tpm
        self.default_ttl = default_ttl

    async def admit(self, principal: Principal, tokens: int) -> Admission:
        """Take one request and `tokens` from the caller's buckets, or raise RateLimited (429)."""
        rpm = principal.rpm_limit or self.key_rpm
        tpm = principal.tpm_limit or self.key_tpm
        if not rpm and not tpm:
            return Admission({})
        who = f"user:{principal.user_id if principal.user_id is not None else principal.user_name}"
        takes: list[tuple[str, Limit, float]] = []
        if rpm:
            takes.append((f"{who}:rpm", Limit(float(rpm)), 1.0))
        if tpm:
            takes.append((f"{who}:tpm", Limit(float(tpm)), float(tokens)))
        decisions = await self.limiter.take_many(takes)
        by_kind: dict[str, Decision] = {key.rsplit(":", 1)[1]: d for (key, _, _), d in zip(takes, decisions)}
        headers = rate_limit_headers(by_kind.get("rpm"), by_kind.get("tpm"))
        if not decisions[0].allowed:
            wait = retry_after(decisions)
            error = RateLimited(
                f"Rate limit reached for {principal.user_name}: "
                + ", ".join(f"{int(limit.per_minute)} {'requests' if key.endswith('rpm') else 'tokens'}/min"
                            for key, limit, _ in takes)
                + f". Try again in {wait:.1f} s.",
                retry_after=wait,
            )
            error.headers = headers  # type: ignore[attr-defined]
            raise error
        if tpm:
            return Admission(headers, f"{who}:tpm", Limit(float(tpm)), float(tokens))
        return Admission(headers)

    async def settle(self, admission: Admission, actual_tokens: int | None) -> None:
        """Correct the token bucket once the real usage is known (refund or extra charge)."""
        if admission.tokens_key is None or admission.tokens_limit is None or actual_tokens is None:
            return
        difference = actual_tokens - admission.tokens_taken
        if difference:
            await self.limiter.charge(admission.tokens_key, admission.tokens_limit, difference)

    def cache_plan(
        self, body: dict[str, Any], headers: Mapping[str, str], principal: Principal, route_cache: Mapping[str, Any] | None
    ) -> CachePlan | None:
        """Whether and how to cache this request; None when it is not opted in (or streams)."""
        if body.get("stream"):
            return None
        ttl: float | None = None
        shared = False
        if route_cache:
            ttl = float(route_cache.get("ttl", self.default_ttl))
            shared = bool(route_cache.get("shared", False))
        flag = headers.get("x-gaud-cache", "").lower()
        control = headers.get("cache-control", "").lower()
        field = body.get("cache")
        if flag in ("off", "no", "false", "0") or "no-store" in control or field is False:
            return None
        if flag in ("on", "yes", "true", "1"):
            ttl = ttl or self.default_ttl
        match = _MAX_AGE.search(control)
        if match:
            ttl = float(match[1])
        if field is True:
            ttl = ttl or self.default_ttl
        elif isinstance(field, dict) and isinstance(field.get("ttl"), (int, float)):
            ttl = float(field["ttl"])
        if not ttl or ttl <= 0:
            return None
        scope = "shared" if shared else f"user:{principal.user_id if principal.user_id is not None else principal.user_name}"
        return CachePlan(cache_key(body, scope=scope), ttl)
