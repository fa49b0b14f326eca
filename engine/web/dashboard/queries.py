"""Read-only queries behind the dashboard: usage over time, totals, spend against budgets.

SQLAlchemy Core against the store's tables, so the same queries run on SQLite and PostgreSQL.
Every function is synchronous (the dashboard calls them in a thread) and takes the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ...accounts.budgets import day_start, month_start
from ...accounts.store import api_keys, audit_log, users

__all__ = [
    "Series",
    "TotalsRow",
    "UserSpend",
    "session_key_status",
    "spend_by_user",
    "time_series",
    "totals",
    "user_names",
]

#: What a request is charted under in the per-model charts: the deployment that served it,
#: else the alias asked for (cache hits, requests refused before routing).
MODEL_LABEL = sa.func.coalesce(audit_log.c.deployment, audit_log.c.alias, "(none)")
USER_LABEL = sa.func.coalesce(audit_log.c.user_name, "(unknown)")


@dataclass
class Series:
    """Requests and cost per bucket for each name (a user or a model), oldest bucket first."""

    start: float
    bucket_seconds: int
    buckets: int
    requests: dict[str, list[int]] = field(default_factory=dict)
    cost: dict[str, list[float]] = field(default_factory=dict)

    @property
    def bucket_starts(self) -> list[float]:
        return [self.start + i * self.bucket_seconds for i in range(self.buckets)]


def _bucket(engine: sa.Engine, start: float, bucket_seconds: int) -> Any:
    """The bucket index of each audit row: floor((ts - start) / bucket_seconds)."""
    offset = audit_log.c.ts - start
    if engine.dialect.name == "sqlite":
        # SQLite's CAST truncates, which is floor for the non-negative offsets selected.
        return sa.cast(offset / bucket_seconds, sa.Integer)
    return sa.cast(sa.func.floor(offset / bucket_seconds), sa.Integer)


def time_series(engine: sa.Engine, *, by: str, start: float, bucket_seconds: int, buckets: int) -> Series:
    """Requests and cost per bucket from `start`, per user (`by="user"`) or per model (`by="model"`)."""
    label = {"user": USER_LABEL, "model": MODEL_LABEL}[by].label("name")
    bucket = _bucket(engine, start, bucket_seconds).label("bucket")
    end = start + bucket_seconds * buckets
    query = (
        sa.select(bucket, label, sa.func.count().label("requests"), sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0))
        .where(audit_log.c.ts >= start, audit_log.c.ts < end)
        .group_by(bucket, label)
    )
    series = Series(start, bucket_seconds, buckets)
    with engine.connect() as conn:
        for index, name, requests, cost in conn.execute(query):
            if not 0 <= int(index) < buckets:
                continue
            series.requests.setdefault(name, [0] * buckets)[int(index)] += int(requests)
            series.cost.setdefault(name, [0.0] * buckets)[int(index)] += float(cost)
    return series


@dataclass
class TotalsRow:
    user: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    avg_latency_ms: float | None
    last_ts: float


def totals(engine: sa.Engine, *, since: float | None = None) -> list[TotalsRow]:
    """Per user and model: requests, errors (status >= 400), tokens, cost, mean latency."""
    user, model = USER_LABEL.label("user"), MODEL_LABEL.label("model")
    query = (
        sa.select(
            user,
            model,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((audit_log.c.status >= 400, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0),
            sa.func.avg(audit_log.c.latency_ms),
            sa.func.max(audit_log.c.ts),
        )
        .group_by(user, model)
        .order_by(user, model)
    )
    if since is not None:
        query = query.where(audit_log.c.ts >= since)
    with engine.connect() as conn:
        return [
            TotalsRow(u, m, int(n), int(e), int(p), int(c), float(cost), float(lat) if lat is not None else None, float(ts))
            for u, m, n, e, p, c, cost, lat, ts in conn.execute(query)
        ]


@dataclass
class UserSpend:
    name: str
    role: str
    budget_daily: float | None
    budget_monthly: float | None
    spent_today: float
    spent_month: float
    active_keys: int

    @staticmethod
    def _share(spent: float, budget: float | None) -> float | None:
        return None if not budget else spent / budget

    @property
    def daily_share(self) -> float | None:
        return self._share(self.spent_today, self.budget_daily)

    @property
    def monthly_share(self) -> float | None:
        return self._share(self.spent_month, self.budget_monthly)


def spend_by_user(engine: sa.Engine, *, now: float) -> list[UserSpend]:
    """Every user with their budgets, what they spent today and this month (UTC), active keys."""
    today, month = day_start(now), month_start(now)
    spent = (
        sa.select(
            audit_log.c.user_id.label("user_id"),
            sa.func.coalesce(sa.func.sum(sa.case((audit_log.c.ts >= today, audit_log.c.cost), else_=0.0)), 0.0).label("day"),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0).label("month"),
        )
        .where(audit_log.c.ts >= month, audit_log.c.user_id.is_not(None))
        .group_by(audit_log.c.user_id)
        .subquery()
    )
    keys = (
        sa.select(api_keys.c.user_id.label("user_id"), sa.func.count().label("n"))
        .where(api_keys.c.revoked_at.is_(None))
        .group_by(api_keys.c.user_id)
        .subquery()
    )
    query = (
        sa.select(
            users.c.name, users.c.role, users.c.budget_daily, users.c.budget_monthly,
            sa.func.coalesce(spent.c.day, 0.0), sa.func.coalesce(spent.c.month, 0.0), sa.func.coalesce(keys.c.n, 0),
        )
        .select_from(users)
        .outerjoin(spent, spent.c.user_id == users.c.id)
        .outerjoin(keys, keys.c.user_id == users.c.id)
        .order_by(users.c.name)
    )
    with engine.connect() as conn:
        return [
            UserSpend(name, role, daily, monthly, float(day), float(mon), int(n))
            for name, role, daily, monthly, day, mon, n in conn.execute(query)
        ]


def user_names(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(users.c.name).order_by(users.c.name)).scalars())


def session_key_status(engine: sa.Engine, key_id: int) -> tuple[bool, str | None]:
    """(still unrevoked and unexpired, the user's current role) of the key a dashboard session logged in with."""
    query = (
        sa.select(api_keys.c.revoked_at, users.c.role, api_keys.c.expires_at)
        .join(users, users.c.id == api_keys.c.user_id)
        .where(api_keys.c.id == key_id)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return False, None
    return row[0] is None and (row[2] is None or row[2] > time.time()), row[1]
