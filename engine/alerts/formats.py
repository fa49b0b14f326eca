"""Webhook bodies: plain JSON (`json`) or a Slack incoming-webhook message (`slack`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from .events import Event

__all__ = ["FORMATS", "render"]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def as_json(event: Event) -> dict[str, Any]:
    """`{"kind", "time", "summary", "dedupe_key", "data"}`; `time` in ISO 8601 UTC."""
    return {"kind": event.kind, "time": _iso(event.time), "summary": event.summary,
            "dedupe_key": event.dedupe_key, "data": event.data}


def as_slack(event: Event) -> dict[str, Any]:
    """`text` (what notifications show) and the same as blocks, the kind and time as context."""
    return {
        "text": event.summary,
        "blocks": [
            {"type": "section", "text": {"type": "plain_text", "text": event.summary}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"`{event.kind}` · {_iso(event.time)} · gaud-engine"}]},
        ],
    }


FORMATS: dict[str, Callable[[Event], dict[str, Any]]] = {"json": as_json, "slack": as_slack}


def render(event: Event, fmt: str) -> bytes:
    return orjson.dumps(FORMATS[fmt](event))
