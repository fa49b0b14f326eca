"""Retention and erasure of what the gateway keeps about people.

- `prune_audit`: audit rows older than `audit.retention_days` are deleted in batches of
  `BATCH` rows, one short transaction each, so audit writes interleave with a long prune instead
  of waiting for it. Rows of the current UTC month are always kept, whatever the retention:
  budgets read the month's spend from them (engine.accounts.budgets), so a 7-day retention
  prunes up to the month's start, not into it. On PostgreSQL one pruner runs at a time in a
  deployment: each run takes a session advisory lock and skips the round when another instance
  holds it. On SQLite (one host) concurrent runs only repeat idempotent deletes.
- `erase_user`: a user's keys are revoked and their dashboard sessions and stored Responses API
  replies deleted; their audit rows are anonymised, not removed, so team and global totals stay
  right: the user name becomes a random token (`erased-<12 hex>`, the same for all their rows,
  unrelated to the name), prompt contents are cleared; costs, tokens, models and times stay.
  The user row keeps its id under that token with no role rights beyond `member`, no limits and no
  team (its audit rows keep theirs: a team's spend does not change),
  so the name is free again and a new user of that name starts from nothing.

Calls are synchronous, like `Store`'s: the server runs them in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from .budgets import month_start
from .store import Store, api_keys, audit_log, dashboard_sessions, stored_responses, users

__all__ = ["BATCH", "ERASED_PREFIX", "PRUNE_EVERY", "AuditPruner", "Erased", "erase_account", "erase_user", "finish_erasure", "prune_audit", "prune_before"]

log = logging.getLogger("gaud.accounting")

#: Rows deleted or anonymised per transaction.
BATCH = 1000
#: Seconds between two prune rounds of a running gateway (the first runs at start).
PRUNE_EVERY = 3600.0
#: The PostgreSQL advisory lock key of the audit pruner ("gaudprun" as a 64-bit integer).
PRUNER_LOCK = int.from_bytes(b"gaudprun", "big") & 0x7FFF_FFFF_FFFF_FFFF
ERASED_PREFIX = "erased-"


def prune_before(retention_days: float, now: float | None = None) -> float:
    """The time before which audit rows go: the retention, but never into the current month."""
    now = time.time() if now is None else now
    return min(now - retention_days * 86400.0, month_start(now))


def prune_audit(store: Store, before: float, *, batch: int = BATCH) -> int | None:
    """Delete audit rows with `ts < before`, `batch` rows per transaction; how many went, or
    None when another instance holds the pruner lock (PostgreSQL)."""
    postgres = store.engine.dialect.name == "postgresql"
    with store.engine.connect() as lock:
        if postgres:
            if not lock.execute(sa.select(sa.func.pg_try_advisory_lock(PRUNER_LOCK))).scalar_one():
                return None
            lock.commit()  # the lock is the session's: it outlives this transaction
        try:
            return _delete_batches(store, before, batch)
        finally:
            if postgres:
                lock.execute(sa.select(sa.func.pg_advisory_unlock(PRUNER_LOCK)))
                lock.commit()


def _delete_batches(store: Store, before: float, batch: int) -> int:
    oldest = sa.select(audit_log.c.id).where(audit_log.c.ts < before).order_by(audit_log.c.id).limit(batch)
    deleted = 0
    while True:
        with store.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(oldest)]
            if ids:
                conn.execute(audit_log.delete().where(audit_log.c.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted


class AuditPruner:
    """The background task of a gateway with `audit.retention_days`: a round at start, then one
    every `PRUNE_EVERY` seconds, off the event loop. A failed round is logged and tried again."""

    def __init__(self, store: Store, retention_days: float) -> None:
        if retention_days <= 0:
            raise ValueError("audit.retention_days must be a positive number of days, or null")
        self.store = store
        self.retention_days = retention_days
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int | None:
        before = prune_before(self.retention_days)
        deleted = await asyncio.to_thread(prune_audit, self.store, before)
        if deleted:
            log.info("pruned %d audit rows older than %s", deleted, time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(before)))
        return deleted

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the database may be away for a while; try again later
                log.exception("audit pruning failed; next try in %d s", PRUNE_EVERY)
            await asyncio.sleep(PRUNE_EVERY)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass(frozen=True)
class Erased:
    token: str  # the user's name in the audit log from now on
    keys_revoked: int
    audit_rows: int
    stored_replies: int


def erase_user(store: Store, name: str, *, batch: int = BATCH) -> Erased | None:
    """Erase user `name` (see the module docstring); None when there is no such user. Running it
    again on the token (`erased-…`) anonymises rows that requests in flight at the first run wrote
    under the old name afterwards."""
    with store.engine.begin() as conn:
        erased = erase_account(conn, name)
    return None if erased is None else finish_erasure(store, *erased, batch=batch)


def erase_account(conn: sa.Connection, name: str) -> tuple[int, Erased] | None:
    """The first step of `erase_user`, in the caller's transaction: keys revoked, the user renamed
    to a token, sessions and stored replies deleted. (user id, what was done so far), or None when
    there is no such user; `finish_erasure` anonymises the audit rows after the commit."""
    row = conn.execute(sa.select(users.c.id).where(users.c.name == name)).first()
    if row is None:
        return None
    user_id = int(row[0])
    token = name if name.startswith(ERASED_PREFIX) else ERASED_PREFIX + secrets.token_hex(6)
    revoked = conn.execute(api_keys.update().where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
                           .values(revoked_at=time.time())).rowcount
    conn.execute(users.update().where(users.c.id == user_id).values(
        name=token, role="member", budget_daily=None, budget_monthly=None, rpm_limit=None, tpm_limit=None,
        team_id=None))
    conn.execute(dashboard_sessions.delete().where(dashboard_sessions.c.user_id == user_id))
    replies = conn.execute(stored_responses.delete().where(stored_responses.c.user_id == user_id)).rowcount
    return user_id, Erased(token, revoked, 0, replies)


def finish_erasure(store: Store, user_id: int, erased: Erased, *, batch: int = BATCH) -> Erased:
    """The audit rows of an erased user anonymised, in batches; `erased` with their count."""
    return dataclasses.replace(erased, audit_rows=_anonymise(store, user_id, erased.token, batch))


def _anonymise(store: Store, user_id: int, token: str, batch: int) -> int:
    """The user's audit rows under `token`, contents cleared, `batch` rows per transaction."""
    pending = (audit_log.c.user_id == user_id) & (
        (audit_log.c.user_name != token) | audit_log.c.user_name.is_(None) | audit_log.c.content.is_not(None))
    next_ids = sa.select(audit_log.c.id).where(pending).order_by(audit_log.c.id).limit(batch)
    done = 0
    while True:
        with store.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(next_ids)]
            if ids:
                conn.execute(audit_log.update().where(audit_log.c.id.in_(ids)).values(user_name=token, content=None))
        done += len(ids)
        if len(ids) < batch:
            return done
