"""Wires the alert sink (engine/alerts) to what emits into it: budgets, breakers, the gateway, the audit writer."""

from __future__ import annotations

import os
from typing import Any

from ..accounts.audit import AuditWriter
from ..alerts.config import webhooks_from_settings
from ..alerts.sink import AlertSink
from ..config import Settings
from ..metrics import Metrics
from ..pipeline.gateway import Gateway
from ..spec.secretfiles import with_files

__all__ = ["wire_alerts"]


def wire_alerts(settings: Settings, metrics: Metrics, gateway: Gateway, budgets: Any, audit: AuditWriter) -> AlertSink | None:
    """The sink for `alerts.webhooks`, set on every emitter; None (and nothing set, so emitting
    costs one `is None` test) when no webhook is configured. Raises ValueError on a bad entry."""
    webhooks = webhooks_from_settings(settings.get("alerts.webhooks"), with_files(os.environ))
    if not webhooks:
        return None
    sink = AlertSink(
        webhooks, dedupe_seconds=float(settings.get("alerts.dedupe_seconds")),
        queue_size=int(settings.get("alerts.queue_size")), attempts=int(settings.get("alerts.attempts")),
        backoff=float(settings.get("alerts.backoff")), max_backoff=float(settings.get("alerts.max_backoff")),
        metrics=metrics,
    )
    budgets.alerts = audit.alerts = gateway.alerts = sink
    gateway.router.breakers.listener = sink.breaker_listener
    return sink
