"""Traces of requests for OpenTelemetry collectors: off unless configured, the SDK imported only then.

`tracing.load_tracing` decides from the settings and the standard OTEL_* variables; `otel` holds
the spans (one per client request, one per upstream attempt) and is the only module that imports
OpenTelemetry. Like engine/metrics.py this sits below every other layer and imports none of them:
what it records comes in as plain values (or the pipeline's Exchange, read by attribute).
"""
