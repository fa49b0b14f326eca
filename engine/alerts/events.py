"""The alert events: a kind, a time, a dedupe key, a human summary and plain data.

Events carry names, numbers and states only: never a secret, a key or prompt text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS", "Event", "audit_spilled", "breaker_changed", "budget_crossings", "upstream_auth_failed",
]

#: Every event kind, for `alerts.webhooks[].events`.
KINDS = ("budget.threshold", "breaker.opened", "breaker.closed", "upstream.auth_failed", "audit.spilled")


@dataclass(frozen=True)
class Event:
    kind: str
    summary: str
    #: Events with the same key within `alerts.dedupe_seconds` are sent once (state events excepted).
    dedupe_key: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    #: A state event's (subject, state), e.g. a breaker's: sent unless it repeats the last state
    #: sent for that subject, however soon (a time window could hide the latest state, e.g. the
    #: second opening of a flapping breaker); None for the other events.
    state: tuple[str, str] | None = None


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def budget_crossings(
    scope: str, name: str, period: str, period_start: float, limit: float | None, before: float, after: float,
    warn_at: tuple[float, ...] = (0.8,),
) -> list[Event]:
    """The `budget.threshold` events of one settle: each fraction of `warn_at`, and 100 %, that spend
    crossed going from `before` to `after` (before < fraction * limit <= after).

    `scope` is "user" or "team", `period` "daily" or "monthly", `period_start` the UTC start of the
    period (part of the dedupe key: a threshold is reported once per period).
    """
    if not limit or after <= before:
        return []
    events = []
    for fraction in sorted({*warn_at, 1.0}):
        line = fraction * limit
        if before < line <= after:
            percent = f"{fraction:.0%}"
            events.append(Event(
                "budget.threshold",
                f"{scope.capitalize()} {name} passed {percent} of the {period} budget: "
                f"${after:.4f} of ${limit:.4f} spent (period from {_day(period_start)} UTC).",
                f"budget.threshold:{scope}:{name}:{period}:{int(period_start)}:{fraction:g}",
                {"scope": scope, "name": name, "period": period, "period_start": int(period_start),
                 "threshold": fraction, "limit": limit, "spent": after},
            ))
    return events


def breaker_changed(deployment: str, state: str, failures: int) -> Event:
    """`breaker.opened` or `breaker.closed` for one deployment: a state event (the breaker's
    cooldown bounds how often it can change)."""
    if state == "open":
        summary = f"Circuit breaker of {deployment} opened after {failures} consecutive failures; it is skipped until a probe succeeds."
    else:
        summary = f"Circuit breaker of {deployment} closed: a probe succeeded, it serves requests again."
    kind = "breaker.opened" if state == "open" else "breaker.closed"
    return Event(kind, summary, f"{kind}:{deployment}", {"deployment": deployment, "state": state, "failures": failures},
                 state=(f"breaker:{deployment}", state))


def upstream_auth_failed(deployment: str, provider: str, status: int, error_kind: str) -> Event:
    """An upstream refused the gateway's credentials (HTTP 401 or 403)."""
    return Event(
        "upstream.auth_failed",
        f"{deployment} refused the gateway's credentials (HTTP {status}, {error_kind}): check the {provider} key.",
        f"upstream.auth_failed:{deployment}:{status}",
        {"deployment": deployment, "provider": provider, "status": status, "error_kind": error_kind},
    )


def audit_spilled(records: int, path: str) -> Event:
    """The audit writer saved records to a spill file (the database refused them at shutdown)."""
    return Event(
        "audit.spilled",
        f"The audit database was unreachable: {records} records saved to {path} (imported at the next start).",
        f"audit.spilled:{path}",
        {"records": records, "path": path},
    )
