"""Per-key rate limits and the response cache policy, in front of the gateway.

Rate limits are token buckets (requests and tokens per minute) per user, from config defaults
and per-user settings, and per team (a bucket the team's members share, engine.accounts.teams); in-process by default, shared through Redis when `redis.url` is set.
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


def _tightest(takes: list[tuple[str, Limit, float]], decisions: list[Decision], kind: str) -> Decision | None:
    """Of the buckets of one kind (rpm, tpm), the one with the least left: what the headers show."""
    found = [d for (key, _, _), d in zip(takes, decisions) if key.endswith(kind)]
    return min(found, key=lambda d: d.remaining) if found else None

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")


@dataclass
class Admission:
    headers: dict[str, str]
    #: The tokens-per-minute buckets charged (the user's, the team's), corrected at settle.
    token_buckets: tuple[tuple[str, Limit], ...] = ()
    tokens_taken: float = 0.0
    #: Its place among the requests in flight (engine.accounts.inflight), given back at settle.
    slot: Slot | None = None

    @property
    def tokens_key(self) -> str | None:
        """The first tokens bucket charged; None when no tokens limit applies."""
        return self.token_buckets[0][0] if self.token_buckets else None


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
        """Take one request and `tokens` from the caller's buckets and its team's (a team-wide
        bucket its members share), all or none, or raise RateLimited (429)."""
        takes = self._takes(principal, float(tokens))
        if not takes:
            return Admission({})
        decisions = await self.limiter.take_many(takes)
        headers = rate_limit_headers(_tightest(takes, decisions, "rpm"), _tightest(takes, decisions, "tpm"))
        if not decisions[0].allowed:
            wait = retry_after(decisions)
            short = [take for take, d in zip(takes, decisions) if d.retry_after > 0] or takes
            owners: dict[str, list[str]] = {}
            for key, limit, _ in short:
                owner = (f"team '{principal.team_name}'" if key.startswith("team:") else principal.user_name)
                owners.setdefault(owner, []).append(
                    f"{int(limit.per_minute)} {'requests' if key.endswith('rpm') else 'tokens'}/min")
            error = RateLimited(
                "Rate limit reached for " + "; ".join(f"{who}: {', '.join(what)}" for who, what in owners.items())
                + f". Try again in {wait:.1f} s.",
                retry_after=wait,
            )
            error.headers = headers  # type: ignore[attr-defined]
            raise error
        buckets = tuple((key, limit) for key, limit, _ in takes if key.endswith(":tpm"))
        return Admission(headers, buckets, float(tokens))

    def _takes(self, principal: Principal, tokens: float) -> list[tuple[str, Limit, float]]:
        """The buckets a request takes from: the user's (its own limits, else the defaults), then
        its team's. The tighter of the two is what refuses first."""
        takes: list[tuple[str, Limit, float]] = []
        user_rpm, user_tpm = principal.rpm_limit or self.key_rpm, principal.tpm_limit or self.key_tpm
        team = f"team:{principal.team_id}" if principal.team_id is not None else None
        if not (user_rpm or user_tpm or (team is not None and (principal.team_rpm_limit or principal.team_tpm_limit))):
            return takes  # no limit applies: no bucket names to build
        who = f"user:{principal.user_id if principal.user_id is not None else principal.user_name}"
        for owner, rpm, tpm in ((who, user_rpm, user_tpm), (team, principal.team_rpm_limit, principal.team_tpm_limit)):
            if owner is None:
                continue
            if rpm:
                takes.append((f"{owner}:rpm", Limit(float(rpm)), 1.0))
            if tpm:
                takes.append((f"{owner}:tpm", Limit(float(tpm)), tokens))
        return takes

    async def settle(self, admission: Admission, actual_tokens: int | None) -> None:
        """Correct the token buckets once the real usage is known (refund or extra charge)."""
        if not admission.token_buckets or actual_tokens is None:
            return
        difference = actual_tokens - admission.tokens_taken
        if difference:
            for key, limit in admission.token_buckets:
                await self.limiter.charge(key, limit, difference)

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
