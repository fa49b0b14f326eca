"""What the audit log keeps of each deployment a request went to (audit_log.attempt_log, JSON):
one entry per attempt (its status, error and duration) and per deployment skipped (why), in order.

An entry: `{"deployment", "status", "error", "message", "upstream_status", "ms"}` for an attempt
(`status` 200 and `error` null when it answered; for a stream, when the stream opened), or
`{"deployment", "skipped", "error"}` for a deployment passed over. Messages are those a client
could be shown, cut to MESSAGE_CHARS; never a request's or reply's content.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import GatewayError

__all__ = ["MESSAGE_CHARS", "attempt_entry", "skip_entry"]

MESSAGE_CHARS = 300


def attempt_entry(deployment: str, started: float, error: BaseException | None) -> dict[str, Any]:
    """An attempt that began at `started` (time.perf_counter) and ended with `error` (None: it answered)."""
    entry: dict[str, Any] = {"deployment": deployment, "status": 200, "error": None, "message": None,
                             "upstream_status": None, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if error is None:  # the common case: no isinstance tests
        return entry
    if isinstance(error, GatewayError):
        entry.update(status=error.status, error=error.kind, message=error.message[:MESSAGE_CHARS],
                     upstream_status=error.upstream_status)
    elif isinstance(error, Exception):
        entry.update(status=500, error="internal_error")  # the details went to the log (Gateway._unexpected)
    else:
        entry.update(status=None, error="cancelled")  # the client went away, or the server stopped it
    return entry


def skip_entry(deployment: str, reason: str, error: GatewayError | None = None) -> dict[str, Any]:
    """A deployment not tried: `reason` in words, `error` the kind it counts as (if any)."""
    return {"deployment": deployment, "skipped": reason[:MESSAGE_CHARS], "error": None if error is None else error.kind}
