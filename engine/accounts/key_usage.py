"""Each API key with what `keys list` and the dashboard's keys page show beside it: its user's spend
today and this month (UTC, what the budgets count) and when the key was last used.

Last use is read from the audit log, not written per request: every audit row carries its key
(`audit_log.key_id`, m009), and the (key_id, ts) index (m010) makes a key's newest row one index
seek. Requests audited before m009 have no key, so a key used only before then shows as never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from .budgets import day_start, month_start
from .store import KeyInfo, Store, api_keys, audit_log, users

__all__ = ["KeyUsage", "key_usage"]


@dataclass(frozen=True)
class KeyUsage:
    key: KeyInfo
    user_spent_today: float
    user_spent_month: float
    last_used: float | None


def key_usage(store: Store, *, now: float) -> list[KeyUsage]:
    """Every key (store.list_keys order) with its user's spend and its last use."""
    keys = store.list_keys()
    today, month = day_start(now), month_start(now)
    spent = (
        sa.select(
            users.c.name,
            sa.func.coalesce(sa.func.sum(sa.case((audit_log.c.ts >= today, audit_log.c.cost), else_=0.0)), 0.0),
            sa.func.coalesce(sa.func.sum(audit_log.c.cost), 0.0),
        )
        .join(users, users.c.id == audit_log.c.user_id)
        .where(audit_log.c.ts >= month)
        .group_by(users.c.name)
    )
    # Per key, its newest audit row: a correlated max() that the (key_id, ts) index answers with one seek.
    newest = sa.select(sa.func.max(audit_log.c.ts)).where(audit_log.c.key_id == api_keys.c.id).scalar_subquery()
    with store.engine.connect() as conn:
        by_user = {name: (float(day), float(mon)) for name, day, mon in conn.execute(spent)}
        last: dict[int, float | None] = {row[0]: row[1] for row in conn.execute(sa.select(api_keys.c.id, newest))}
    return [KeyUsage(k, *by_user.get(k.user_name, (0.0, 0.0)), last_used=last.get(k.id)) for k in keys]
