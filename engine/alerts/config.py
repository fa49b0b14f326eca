"""`alerts.*` settings -> webhooks, checked at start (a mistake is an error then, not a lost alert)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .events import KINDS
from .formats import FORMATS

__all__ = ["Webhook", "webhooks_from_settings"]

_FIELDS = {"url", "secret", "secret_env", "format", "events", "timeout"}


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: bytes | None = None
    format: str = "json"
    events: frozenset[str] = frozenset(KINDS)
    timeout: float = 5.0

    def wants(self, kind: str) -> bool:
        return kind in self.events

    @property
    def where(self) -> str:
        """Scheme and host only, for logs: a webhook URL's path is often its secret (Slack's are)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def __repr__(self) -> str:  # neither the secret nor the URL's path reaches a log line
        return f"Webhook({self.where!r}, format={self.format!r})"


def webhooks_from_settings(entries: Any, environ: Mapping[str, str]) -> list[Webhook]:
    """`alerts.webhooks`: a list of `{url, secret | secret_env, format, events, timeout}`.

    `secret_env` names a variable read from `environ` (give one that resolves `NAME_FILE`, see
    engine/spec/secretfiles.py). Raises ValueError naming the entry and the field at fault.
    """
    if not entries:
        return []
    if not isinstance(entries, list):
        raise ValueError("alerts.webhooks must be a list of {url, secret | secret_env, format, events, timeout}")
    return [_webhook(i, entry, environ) for i, entry in enumerate(entries)]


def _webhook(i: int, entry: Any, environ: Mapping[str, str]) -> Webhook:
    where = f"alerts.webhooks[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping with a url")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    url = str(entry.get("url") or "")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise ValueError(f"{where}.url must be an http(s) URL")
    fmt = str(entry.get("format") or "json")
    if fmt not in FORMATS:
        raise ValueError(f"{where}.format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    events = entry.get("events") or list(KINDS)
    if not isinstance(events, list) or set(events) - set(KINDS):
        raise ValueError(f"{where}.events must be a list of {', '.join(KINDS)}")
    timeout = float(entry.get("timeout") or 5.0)
    if timeout <= 0:
        raise ValueError(f"{where}.timeout must be positive")
    return Webhook(url, _secret(where, entry, environ), fmt, frozenset(events), timeout)


def _secret(where: str, entry: dict[str, Any], environ: Mapping[str, str]) -> bytes | None:
    if entry.get("secret") and entry.get("secret_env"):
        raise ValueError(f"{where}: give secret or secret_env, not both")
    if entry.get("secret_env"):
        name = str(entry["secret_env"])
        value = environ.get(name, "")
        if not value:
            raise ValueError(f"{where}.secret_env: {name} (or {name}_FILE) is not set")
        return value.encode()
    return str(entry["secret"]).encode() if entry.get("secret") else None
