"""Whether client requests are traced, and the tracer when they are.

Tracing is on when `telemetry.enabled` is true, when `telemetry.endpoint` is set, or (with
`telemetry.enabled` left unset) when the standard variables name somewhere to send spans:
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER (`none` and
OTEL_SDK_DISABLED=true turn it off). OpenTelemetry is imported only then, so a gateway without the
`otel` extra installed, or with tracing off, imports and pays nothing; configured without it, the
gateway serves and says once, at start, that no traces are exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .otel import Tracing

__all__ = ["load_tracing", "wanted"]

log = logging.getLogger("gaud.tracing")

#: Variables that, set, say where spans go (and so turn tracing on when `telemetry.enabled` is unset).
SWITCHES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER")


def wanted(get: Callable[[str], Any], environ: Mapping[str, str]) -> str | None:
    """What turned tracing on (a setting or variable name, for messages), or None: off."""
    enabled = get("telemetry.enabled")
    if enabled is not None:
        return "telemetry.enabled" if enabled else None
    if get("telemetry.endpoint"):
        return "telemetry.endpoint"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    return next((name for name in SWITCHES if environ.get(name, "").strip()), None)


def load_tracing(get: Callable[[str], Any], environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The tracer the settings ask for, or None (tracing off, or OpenTelemetry not installed)."""
    environ = os.environ if environ is None else environ
    reason = wanted(get, environ)
    if reason is None:
        return None
    try:
        from .otel import Tracing
    except ImportError as exc:
        log.warning("tracing is configured (%s) but OpenTelemetry is not installed (no module %s): no traces are "
                    "exported; install gaud-engine[otel]", reason, exc.name)
        return None
    log.info("tracing requests with OpenTelemetry (turned on by %s)", reason)
    return Tracing.from_settings(get, environ)
