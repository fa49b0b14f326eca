"""Dashboard sessions: a random id in a cookie, who logged in with it kept in the database.

Only a SHA-256 of each id is stored, so every worker process and instance using the database accepts
a session, and a leaked table opens none.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...accounts.store import Principal, Store

__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "Session", "Sessions", "Viewer"]

SESSION_COOKIE = "gaud_dashboard"
SESSION_SECONDS = 8 * 3600


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Sessions:
    """Session id -> who logged in, in the store's database, shared by every process using it.

    Only a SHA-256 of each id is stored. Calls are synchronous (the dashboard runs them in a
    thread). `limit` caps the live sessions: creating one past it drops the oldest.
    """

    def __init__(
        self,
        store: Store,
        *,
        seconds: float = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
        limit: int = 10_000,
    ) -> None:
        self.store = store
        self.seconds = seconds
        self.clock = clock
        self.limit = limit

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()

    def create(self, principal: Principal) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(principal, secrets.token_urlsafe(32), now + self.seconds)
        self.store.save_dashboard_session(
            self._digest(session_id), principal, session.csrf, now=now, expires=session.expires, limit=self.limit
        )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        found = self.store.dashboard_session(self._digest(session_id), now=self.clock())
        return Session(*found) if found is not None else None

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self.store.drop_dashboard_session(self._digest(session_id))

    def count(self) -> int:
        """Live sessions, in every process."""
        return self.store.count_dashboard_sessions(now=self.clock())


@dataclass
class Viewer:
    """Who is looking at a page, and the token their forms must carry."""

    principal: Principal
    csrf: str
    session_id: str | None = None
