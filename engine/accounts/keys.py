"""What a key may do, as an operator writes it: the fields of `keys create` / `keys update` and of
`POST /admin/keys` / `PATCH /admin/keys/{id}`, validated by one implementation for both.

- `models`: glob patterns (`smart,fast-*`), matched against the model name the client sent. A
  pattern without `/` matches the name, or the model part of `provider/model`; a pattern with `/`
  matches only `provider/model` names. No list: every model.
- `expires`: `30d`, `12h`, `45m`, `2w`, a date (`2027-01-31`, 00:00 UTC), an ISO date-time, a Unix
  time, or `never`.
- `label`: free text for people (`ci runner`).
- `max_in_flight`: how many of the key's requests may run at once (a whole number, at least 1;
  none: no limit of its own); over it a request gets a 429 (engine.accounts.inflight).
- `role`, `budget_daily`, `budget_monthly`, `rpm_limit`, `tpm_limit`: these live on the key's user,
  so a change applies to every key of that user.

Errors are `InvalidRequest`s naming the field (`param`), so the HTTP API answers 400 and the CLI
prints the message.
"""

from __future__ import annotations

import calendar
import contextlib
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from fnmatch import translate
from functools import lru_cache
from typing import Any

from ..errors import InvalidRequest

__all__ = ["KEY_FIELDS", "USER_FIELDS", "ModelPatterns", "key_changes", "model_patterns", "parse_user"]

#: Fields stored on the key itself.
KEY_FIELDS = ("models", "expires_at", "label", "max_in_flight")
#: Fields stored on the key's user (every key of that user).
USER_FIELDS = ("role", "budget_daily", "budget_monthly", "rpm_limit", "tpm_limit")
ROLES = ("admin", "member")
MAX_PATTERNS = 100
MAX_TEXT = 200
_DURATION = re.compile(r"(\d{1,6})([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CLEAR = (None, "", "none", "never", "null")


class ModelPatterns:
    """A compiled allow-list: `patterns.allows("fast-large")`."""

    __slots__ = ("_bare", "_qualified", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        bare = [translate(p) for p in patterns if "/" not in p]
        qualified = [translate(p) for p in patterns if "/" in p]
        self._bare = re.compile("|".join(bare)) if bare else None
        self._qualified = re.compile("|".join(qualified)) if qualified else None

    def allows(self, model: str) -> bool:
        if self._bare is not None and self._bare.match(model.rpartition("/")[2] if "/" in model else model):
            return True
        return "/" in model and self._qualified is not None and self._qualified.match(model) is not None


@lru_cache(maxsize=1024)
def model_patterns(patterns: tuple[str, ...]) -> ModelPatterns:
    """The compiled allow-list for a key's patterns (compiled once per distinct list)."""
    return ModelPatterns(patterns)


def parse_models(value: Any) -> tuple[str, ...] | None:
    """A list of patterns, or a comma-separated string of them; empty or None: every model."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise InvalidRequest("'models' must be a list of model name patterns.", param="models")
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest("'models' must be a list of model name patterns.", param="models")
        pattern = item.strip()
        if not pattern and isinstance(value, str):
            continue
        if not pattern or len(pattern) > MAX_TEXT or "," in pattern or not pattern.isprintable() or " " in pattern:
            raise InvalidRequest(f"'models' has an invalid pattern {pattern!r}: no spaces or commas, 1 to "
                                 f"{MAX_TEXT} characters.", param="models")
        if pattern not in patterns:
            patterns.append(pattern)
    if len(patterns) > MAX_PATTERNS:
        raise InvalidRequest(f"'models' has more than {MAX_PATTERNS} patterns.", param="models")
    return tuple(patterns) or None


def parse_expiry(value: Any, now: float) -> float | None:
    """A Unix time in the future, or None for `never`."""
    if isinstance(value, str):
        value = value.strip().lower()
    if value in _CLEAR:
        return None
    when: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        when = float(value)
    elif isinstance(value, str):
        when = _expiry_text(value, now)
    if when is None:
        raise InvalidRequest("'expires' must be a duration (30d, 12h, 45m, 2w), a date (2027-01-31), an ISO "
                             "date-time, a Unix time, or never.", param="expires")
    if when <= now:
        raise InvalidRequest("'expires' is in the past.", param="expires")
    return when


def _expiry_text(value: str, now: float) -> float | None:
    match = _DURATION.fullmatch(value)
    if match:
        return now + int(match[1]) * _UNITS[match[2]]
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_user(value: Any, field: str = "user") -> str:
    """The name of the user a new key is for (created if new), given as `field`."""
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_TEXT or not value.isprintable():
        raise InvalidRequest(f"'{field}' is required (1 to {MAX_TEXT} printable characters).", param=field)
    return value.strip()


def parse_label(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value.strip()) > MAX_TEXT or not value.isprintable():
        raise InvalidRequest(f"'label' must be text of at most {MAX_TEXT} printable characters.", param="label")
    return value.strip() or None


def parse_amount(value: Any, name: str) -> float | None:
    """A non-negative number (or its text); None, '' or 'none' clears it."""
    if isinstance(value, str):
        value = value.strip().lower()
        if value not in _CLEAR:
            with contextlib.suppress(ValueError):
                value = float(value)
    if value in _CLEAR:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value or value == float("inf"):
        raise InvalidRequest(f"'{name}' must be a non-negative number (or none).", param=name)
    return float(value)


def parse_count(value: Any, name: str) -> int | None:
    """A whole number of at least 1 (or its text); None, '' or 'none' clears it."""
    if isinstance(value, str):
        value = value.strip().lower()
        if value not in _CLEAR and value.isdigit():
            value = int(value)
    if value in _CLEAR:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise InvalidRequest(f"'{name}' must be a whole number from 1 to 1000000 (or none).", param=name)
    return value


def parse_role(value: Any) -> str:
    if value not in ROLES:
        raise InvalidRequest("'role' must be admin or member.", param="role")
    return str(value)


def key_changes(raw: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The validated fields present in `raw` (HTTP JSON names; `expires` becomes `expires_at`).
    A field given as null/none is cleared; a field absent is left as it is."""
    now = time.time() if now is None else now
    known = {"role", "budget_daily", "budget_monthly", "rpm_limit", "tpm_limit", "models", "expires", "label",
             "max_in_flight"}
    changes: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            continue
        if name == "role":
            changes["role"] = parse_role(value)
        elif name == "models":
            changes["models"] = parse_models(value)
        elif name == "expires":
            changes["expires_at"] = parse_expiry(value, now)
        elif name == "label":
            changes["label"] = parse_label(value)
        elif name == "max_in_flight":
            changes["max_in_flight"] = parse_count(value, name)
        else:
            changes[name] = parse_amount(value, name)
    return changes
