"""Settings, read once: embedded defaults < the config file < `GAUD_*` environment variables.

Every setting has a dotted name (`server.port`) and an environment variable made from it
(`GAUD_SERVER_PORT`). Values from the environment are parsed as YAML scalars (`8400`, `true`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "Settings", "load_settings"]

DEFAULTS: dict[str, dict[str, Any]] = {
    # shutdown_timeout: seconds in-flight requests get to finish after SIGTERM; those still running
    # then get a 503 `shutdown` (an error event on a stream), and are audited so.
    # proxy_headers: trust X-Forwarded-For/-Proto from forwarded_allow_ips (behind a reverse proxy).
    # Slow clients (docs/decisions.md, Operations): header_timeout: seconds a client has to send a request's
    # headers (from connecting, or from the previous response), else the connection is closed;
    # body_timeout: seconds to send the body, else a 408; send_timeout: seconds a response may wait
    # on a client that does not read, else the request ends as a disconnect (499).
    "server": {"host": "127.0.0.1", "port": 8400, "shutdown_timeout": 30.0, "workers": 1,
               "proxy_headers": False, "forwarded_allow_ips": "127.0.0.1",
               "header_timeout": 10.0, "body_timeout": 30.0, "send_timeout": 30.0},
    "specs": {"dir": None},
    "database": {"url": "sqlite:///gaud.db"},
    # format: auto (text in a terminal, JSON lines otherwise) | json | text
    # flush_interval: seconds info lines may wait to be written in one batch (0: each at once);
    # warnings and errors are always written at once.
    "log": {"level": "info", "format": "auto", "flush_interval": 0.2},
    # /metrics needs an admin key when auth is on, unless require_admin is false.
    "metrics": {"require_admin": True},
    # Seconds. read_timeout: the longest wait for one socket read (a ping resets it).
    # total_timeout: one attempt in all, a stream's relay included; 20 min is ~48k output tokens
    #   at 40 tokens/s, so long reasoning streams finish.
    # idle_timeout: no content once the upstream has answered (its headers): in a stream text,
    #   reasoning or tool calls, not pings or comments; in a JSON body anything but whitespace.
    #   5 min lets a model reason silently before its first token, and still ends a stuck
    #   upstream that only pings. Before the headers, read_timeout bounds the silence.
    # request_deadline: the whole request, retries, backoff sleeps and fallbacks included: one
    #   full-length attempt plus 10 min for the others. null: no limit. routes.yaml deployments
    #   may set their own total_timeout and idle_timeout.
    "upstream": {"connect_timeout": 10.0, "read_timeout": 600.0, "max_connections": 256,
                 "total_timeout": 1200.0, "idle_timeout": 300.0, "request_deadline": 1800.0},
    "limits": {
        "max_body_bytes": 20 * 1024 * 1024,
        "max_messages": 2048,
        "max_message_chars": 4_000_000,
        "max_images": 100,
        "max_image_bytes": 20 * 1024 * 1024,
        "max_tools": 256,
        "max_depth": 64,
        "max_n": 8,
        # strip | refuse: what to do with control characters (NUL, ESC, ...) in message text.
        "control_chars": "strip",
        # Requests served at once by this process (null: no limit); past it a 503 `busy` with
        # retry-after, before any upstream work. Keys may have their own (keys create --max-in-flight).
        "max_in_flight": None,
    },
    # key_secret: the secret API keys are HMAC'd under (several, comma-separated, rotate: the first
    # is current). Unset: GAUD_SECRET_KEY, GAUD_SECRET_KEY_FILE, or gaud-secret.key beside a SQLite
    # database (docs/keys.md). Every instance of one deployment must share it.
    "auth": {"enabled": True, "key_secret": None},
    # Shared state (rate limits, cache) for several gateway instances; in-process when unset.
    "redis": {"url": None},
    # Defaults for every API key; a user's own rpm/tpm (keys create --rpm/--tpm) win.
    "ratelimits": {"key_rpm": None, "key_tpm": None},
    "cache": {"max_entries": 1000, "default_ttl": 600.0},
    # allow_unlisted_models: serve a `provider/model` its spec does not list, billed at the
    # provider's highest listed price and marked estimated (false: such a request gets a 404).
    # drop_unsupported_params: drop a parameter a deployment cannot express (its spec's
    # `request.params`) instead of refusing it; named in x-gaud-dropped-params. Per alias in routes.yaml.
    "routing": {"allow_unlisted_models": False, "drop_unsupported_params": False},
    # Add each upstream's own model list to GET /v1/models (fetched at start and on reload).
    "models": {"refresh_from_upstream": False},
    # Warn (response header x-gaud-budget-warning, and the log) past these fractions of a budget.
    "budgets": {"warn_at": [0.8]},
    # Message contents are never stored unless store_content is true.
    # spill_dir: where records the database refuses at shutdown are saved (and imported from at
    # the next start); unset: beside a SQLite database file, else the working directory.
    # spill_after: seconds of failing writes at shutdown before the rest is spilled.
    # journal: journal accepted requests and queued records in spill_dir, so a killed process
    # loses no audit row (the next start writes them; engine/accounts/journal.py).
    # retention_days: audit rows older than this are deleted in the background (null: kept
    # forever); rows of the current month are always kept (budgets read them).
    "audit": {"store_content": False, "batch_size": 500, "max_delay": 0.2, "spill_dir": None, "spill_after": 10.0,
              "journal": True, "retention_days": None},
    # Stored replies of client formats with `state` (the Responses API's `store`, `previous_response_id`,
    # GET/DELETE /v1/responses/{id}): off unless store is true, as it keeps message contents (a consent
    # separate from audit.store_content). retention_days: how long a reply is kept (null: until deleted);
    # expired ones are never served and are deleted by the next write.
    "responses": {"store": False, "retention_days": 30},
    # OpenTelemetry traces (docs/observability.md; needs the `otel` extra). enabled: null follows the
    # OTEL_* variables (on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER is set), true/false
    # force it. endpoint: the OTLP/HTTP collector's base URL (else OTEL_EXPORTER_OTLP_ENDPOINT).
    # service_name: else OTEL_SERVICE_NAME, else gaud-engine. capture_content: record message contents
    # in spans, which leave for the collector (a consent separate from audit.store_content).
    "telemetry": {"enabled": None, "endpoint": None, "service_name": None, "capture_content": False},
    # Webhooks for budget thresholds, breaker changes, upstream credential refusals and audit spills
    # (docs/alerts.md). webhooks: a list of {url, secret | secret_env, format: json|slack, events, timeout}.
    # dedupe_seconds: an event with the same dedupe key is sent once per this interval. attempts: per
    # event and webhook, with exponential backoff from `backoff` seconds (jittered, at most max_backoff).
    # queue_size: events waiting at most (then the oldest is dropped); drain_seconds: at shutdown.
    "alerts": {"webhooks": [], "dedupe_seconds": 600.0, "attempts": 5, "backoff": 1.0, "max_backoff": 60.0,
               "queue_size": 1000, "drain_seconds": 5.0},
    # Image URLs the gateway fetches itself (providers that accept only inline bytes).
    "images": {"allow_private": False, "allowed_hosts": [], "max_bytes": 20 * 1024 * 1024, "timeout": 10.0},
}


class Settings:
    """Read-only view over the merged settings: `settings.get("server.port")`."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self._data = data

    def get(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        return self._data[section][key]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return deepcopy(self._data)


def load_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Merge defaults, the YAML config file and GAUD_* variables; `overrides` (dotted names) win."""
    environ = os.environ if environ is None else environ
    data = deepcopy(DEFAULTS)
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: the config file must hold a mapping")
        for section, values in loaded.items():
            if section not in data or not isinstance(values, dict):
                raise ValueError(f"{config_file}: unknown section '{section}' (known: {', '.join(data)})")
            for key, value in values.items():
                if key not in data[section]:
                    raise ValueError(f"{config_file}: unknown setting '{section}.{key}'")
                data[section][key] = value
    for section, values in data.items():
        for key in values:
            env_name = f"GAUD_{section}_{key}".upper()
            if env_name in environ:
                values[key] = yaml.safe_load(environ[env_name]) if environ[env_name] else None
    if environ.get("GAUD_SPECS_DIR"):
        data["specs"]["dir"] = environ["GAUD_SPECS_DIR"]
    for dotted, value in overrides.items():
        if value is not None:
            section, _, key = dotted.partition(".")
            data[section][key] = value
    return Settings(data)
