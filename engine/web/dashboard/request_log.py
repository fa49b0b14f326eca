"""The request log's queries: a filtered page of audit rows, newest first, and one request's rows.

Pages are keyset-paginated on (ts, id): a page starts strictly before (older) or after (newer) the
cursor row, so a page costs the same however deep it is and rows written meanwhile shift nothing.
Filters are exact matches on indexed or cheap columns; a team filter belongs in `RequestFilter`
once users have teams (it would join `users` on `user_id`).
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import sqlalchemy as sa

from ...accounts.store import api_keys, audit_log

__all__ = ["Cursor", "Page", "RequestFilter", "attempts_of", "parse_time", "request_page", "request_rows"]

PAGE_SIZES = (10, 25, 50, 100, 200)
DETAIL_ROWS = 20  # a client may reuse a request id: at most this many rows are shown for one id

#: The columns a log row shows (never the stored content).
ROW_COLUMNS = (
    audit_log.c.id, audit_log.c.request_id, audit_log.c.ts, audit_log.c.user_name, audit_log.c.alias,
    audit_log.c.deployment, audit_log.c.status, audit_log.c.error_kind, audit_log.c.attempts,
    audit_log.c.prompt_tokens, audit_log.c.completion_tokens, audit_log.c.cached_tokens, audit_log.c.cost,
    audit_log.c.latency_ms, audit_log.c.ttft_ms, audit_log.c.stream, audit_log.c.cache_hit,
    audit_log.c.price_estimated, audit_log.c.usage_estimated, audit_log.c.tried, audit_log.c.attempt_log,
    audit_log.c.key_id,
)


class FilterError(ValueError):
    """A filter value the log cannot use; the message names it."""


def parse_time(value: str, name: str) -> float | None:
    """A UTC date-time from a datetime-local field (`2025-01-31T10:42`, seconds optional) or a date."""
    value = value.strip()
    if not value:
        return None
    for shape in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value, shape)))
        except ValueError:
            continue
    raise FilterError(f"{name} must be a UTC date and time such as 2025-01-31T10:42.")


def _status_clause(value: str) -> Any:
    """`429` (that status), `4xx` (a class), `errors` (400 and up) or `ok` (below 400)."""
    value = value.strip().lower()
    if value == "errors":
        return audit_log.c.status >= 400
    if value == "ok":
        return audit_log.c.status < 400
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return sa.and_(audit_log.c.status >= low, audit_log.c.status < low + 100)
    if value.isdigit() and 100 <= int(value) <= 599:
        return audit_log.c.status == int(value)
    raise FilterError("Status must be a code (429), a class (4xx), errors or ok.")


@dataclass(frozen=True)
class RequestFilter:
    """What the log is narrowed to: every field blank means every request."""

    user: str = ""
    alias: str = ""
    deployment: str = ""
    status: str = ""
    error_kind: str = ""
    request_id: str = ""
    since: str = ""  # datetime-local text, UTC
    until: str = ""

    @classmethod
    def from_query(cls, query: Any) -> RequestFilter:
        return cls(**{f.name: str(query.get(f.name, "")).strip()[:200] for f in fields(cls)})

    def items(self) -> dict[str, str]:
        """The fields set, for links that keep the filter."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def clauses(self) -> list[Any]:
        """The WHERE clauses; FilterError for a value that cannot be used."""
        c = audit_log.c
        exact = {"user": c.user_name, "alias": c.alias, "deployment": c.deployment, "error_kind": c.error_kind,
                 "request_id": c.request_id}
        clauses = [column == getattr(self, name) for name, column in exact.items() if getattr(self, name)]
        if self.status:
            clauses.append(_status_clause(self.status))
        since, until = parse_time(self.since, "From"), parse_time(self.until, "To")
        if since is not None:
            clauses.append(c.ts >= since)
        if until is not None:
            clauses.append(c.ts < until)
        return clauses


@dataclass(frozen=True)
class Cursor:
    """A row's place in the log: (ts, id). Text form `<ts>_<id>`; repr(float) round-trips exactly."""

    ts: float
    id: int

    def __str__(self) -> str:
        return f"{self.ts!r}_{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        ts, _, row = text.partition("_")
        try:
            cursor = cls(float(ts), int(row))
        except ValueError:
            return None
        return cursor if math.isfinite(cursor.ts) else None


@dataclass
class Page:
    rows: list[dict[str, Any]] = field(default_factory=list)
    older: Cursor | None = None  # where the next older page starts, if there is one
    newer: Cursor | None = None  # where the next newer page starts, if there is one


def _row(row: Any) -> dict[str, Any]:
    return {str(k): v for k, v in row._mapping.items()}


def request_page(engine: sa.Engine, flt: RequestFilter, *, limit: int, before: Cursor | None = None,
                 after: Cursor | None = None) -> Page:
    """One page of rows matching `flt`, newest first: the first page, or the rows older than
    `before`, or the rows newer than `after`. FilterError for a filter that cannot be used."""
    ts, row_id = audit_log.c.ts, audit_log.c.id
    query = sa.select(*ROW_COLUMNS).where(*flt.clauses()).limit(limit + 1)
    # `ts <= x` bounds the index range; the OR only settles rows of the very same ts.
    if after is not None:
        query = query.where(ts >= after.ts, sa.or_(ts > after.ts, row_id > after.id)).order_by(ts, row_id)
    else:
        if before is not None:
            query = query.where(ts <= before.ts, sa.or_(ts < before.ts, row_id < before.id))
        query = query.order_by(ts.desc(), row_id.desc())
    with engine.connect() as conn:
        rows = [_row(r) for r in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
    page = Page(rows)
    if rows:
        first, last = Cursor(rows[0]["ts"], rows[0]["id"]), Cursor(rows[-1]["ts"], rows[-1]["id"])
        page.older = last if (more or after is not None) else None
        page.newer = first if (before is not None or (after is not None and more)) else None
    return page


def request_rows(engine: sa.Engine, request_id: str) -> list[dict[str, Any]]:
    """The rows of one request id (newest first), each with its key's lookup and label when known."""
    query = (
        sa.select(*ROW_COLUMNS, api_keys.c.lookup.label("key_lookup"), api_keys.c.label.label("key_label"))
        .outerjoin(api_keys, api_keys.c.id == audit_log.c.key_id)
        .where(audit_log.c.request_id == request_id)
        .order_by(audit_log.c.ts.desc(), audit_log.c.id.desc())
        .limit(DETAIL_ROWS)
    )
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(query)]


def attempts_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A row's attempt log; for rows written before it was kept, one bare entry per deployment in `tried`."""
    raw = row.get("attempt_log")
    if raw:
        try:
            entries = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entries = None
        if isinstance(entries, list):
            return [e for e in entries if isinstance(e, dict)]
    return [{"deployment": name, "status": None, "error": None, "message": None, "upstream_status": None, "ms": None}
            for name in (row.get("tried") or "").split(",") if name]
