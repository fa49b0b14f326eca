"""Stored replies (`responses.store`): what a client asked the gateway to keep so that a later
request can continue from it, per user, until it expires.

Each row holds the whole conversation up to the reply (`input`: the items the model saw, earlier
turns included) and the reply as the client got it, so a continuation reads one row instead of
walking a chain, and deleting one reply never breaks the replies that continued from it.
Every query is by (user, id): another user's reply is indistinguishable from a missing one.
Expired rows are never read, and are deleted on write (at most once per `PRUNE_EVERY` seconds per
process). Calls are synchronous, like `Store`'s: the server runs them in a thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa

from .store import Store, stored_responses

__all__ = ["PRUNE_EVERY", "ConversationStore", "StoredReply"]

#: Seconds between two deletions of expired rows by one process.
PRUNE_EVERY = 60.0

_T = stored_responses


class StoredReply(NamedTuple):
    input: list[Any]
    response: dict[str, Any]


class ConversationStore:
    """Stored replies in the gateway's database; `retention_days` None keeps them until deleted."""

    def __init__(self, store: Store, retention_days: float | None) -> None:
        if retention_days is not None and retention_days <= 0:
            raise ValueError("responses.retention_days must be a positive number of days, or null (keep until deleted)")
        self.engine = store.engine
        self.retention = None if retention_days is None else float(retention_days) * 86400.0
        self._pruned = 0.0
        self._lock = threading.Lock()

    def save(self, user_id: int, reply_id: str, items: list[Any], response: dict[str, Any], *,
             now: float | None = None) -> None:
        now = time.time() if now is None else now
        values = {
            "model": response.get("model"), "created_at": now,
            "expires_at": None if self.retention is None else now + self.retention,
            "input": orjson.dumps(items).decode(), "response": orjson.dumps(response).decode(),
        }
        with self.engine.begin() as conn:
            self._prune(conn, now)
            where = (_T.c.user_id == user_id) & (_T.c.id == reply_id)
            if conn.execute(_T.update().where(where).values(**values)).rowcount == 0:
                conn.execute(_T.insert().values(user_id=user_id, id=reply_id, **values))

    def load(self, user_id: int, reply_id: str, *, now: float | None = None) -> StoredReply | None:
        """The user's live reply with this id, or None (missing, expired or another user's)."""
        query = sa.select(_T.c.input, _T.c.response).where(self._live(user_id, reply_id, now))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else StoredReply(orjson.loads(row.input), orjson.loads(row.response))

    def delete(self, user_id: int, reply_id: str, *, now: float | None = None) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(_T.delete().where(self._live(user_id, reply_id, now))).rowcount > 0

    def prune(self, now: float | None = None) -> int:
        """Delete every expired row; how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(_T.delete().where(_T.c.expires_at <= (time.time() if now is None else now))).rowcount)

    @staticmethod
    def _live(user_id: int, reply_id: str, now: float | None) -> sa.ColumnElement[bool]:
        now = time.time() if now is None else now
        return (_T.c.user_id == user_id) & (_T.c.id == reply_id) & (_T.c.expires_at.is_(None) | (_T.c.expires_at > now))

    def _prune(self, conn: sa.Connection, now: float) -> None:
        with self._lock:
            if now - self._pruned < PRUNE_EVERY:
                return
            self._pruned = now
        conn.execute(_T.delete().where(_T.c.expires_at <= now))
