#!/usr/bin/env python3
"""What OpenTelemetry tracing (engine/observability) costs a request, in CPU.

    python bench/tracing.py [--requests 2000] [--rounds 7]

The whole ASGI app with bench/micro.py's in-memory upstream and client (no sockets), the same
requests three ways, alternating each round:

- off: tracing not configured (the default; OpenTelemetry not imported);
- on, in memory: spans through the BatchSpanProcessor to an exporter that drops them (the span
  work on the event loop, and the processor's thread, without serialization);
- on, OTLP: to a local OTLP/HTTP sink in another process (protobuf encoding and HTTP on the
  SDK's export thread, as in production; the sink's CPU is not counted).

Printed: CPU µs per request (this process, every thread: time.process_time) and wall µs, best and
median over rounds, per route and mode (stream and not). The sink answers 200 to every export.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from micro import FAKE_ENV, AsgiClient, build_app, request_body  # noqa: E402

SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)  # polling a port for readiness
    process.kill()
    raise RuntimeError("the OTLP sink did not start")


def tracer(kind: str, sink: str) -> Any:
    """The Tracing a mode asks for, or None (off)."""
    if kind == "off":
        return None
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from engine.config import load_settings
    from engine.observability.otel import Tracing

    if kind == "otlp":
        return Tracing.from_settings(load_settings(environ={"GAUD_TELEMETRY_ENDPOINT": sink}).get, {})

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Tracing(Drop(), service_name="bench")


def measure(run: Callable[[], Any], loop: asyncio.AbstractEventLoop, n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per request over `n` requests."""
    cpu, wall = time.process_time(), time.perf_counter()
    loop.run_until_complete(run())
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from engine.spec.loader import load_catalog

    catalog = load_catalog(ROOT, environ=FAKE_ENV)
    catalog.raise_for_problems()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sink_process, sink = start_sink()
    modes = ("off", "memory", "otlp")
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = build_app(catalog, Path(tmp))
            client = AsgiClient(app)
            loop.run_until_complete(client.start())
            pipeline = app.app.state.services.pipeline
            tracers = {mode: tracer(mode, sink) for mode in modes}
            for _ in range(args.rounds):
                for model in ("gpt-4o", "claude-sonnet-4"):
                    for stream in (False, True):
                        body = request_body(model, stream)
                        for mode in modes:
                            pipeline.tracing = tracers[mode]

                            async def run(body: bytes = body) -> None:
                                for _ in range(args.requests):
                                    status, payload = await client.post("/v1/chat/completions", body)
                                    if status != 200:
                                        raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")

                            key = (model, "stream" if stream else "non-stream", mode)
                            results.setdefault(key, []).append(measure(run, loop, args.requests))
            pipeline.tracing = None
            loop.run_until_complete(client.stop())
            for mode in modes:
                if tracers[mode] is not None:
                    tracers[mode].shutdown()
    finally:
        sink_process.kill()
        sink_process.wait()
    loop.close()
    print(f"{args.requests} requests x {args.rounds} rounds, modes alternating; CPU and wall µs per request, best / median")
    print("| route | mode | off CPU | on (in memory) CPU | on (OTLP) CPU | OTLP - off CPU | off wall | OTLP wall |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in ("gpt-4o", "claude-sonnet-4"):
        for kind in ("non-stream", "stream"):
            row = {mode: results[(model, kind, mode)] for mode in modes}

            def cpu(mode: str, row: dict[str, list[tuple[float, float]]] = row) -> tuple[float, float]:
                values = [c for c, _ in row[mode]]
                return min(values), statistics.median(values)

            def wall(mode: str, row: dict[str, list[tuple[float, float]]] = row) -> float:
                return statistics.median(w for _, w in row[mode])

            cells = [f"{cpu(m)[0]:.1f} / {cpu(m)[1]:.1f}" for m in modes]
            extra = cpu("otlp")[1] - cpu("off")[1]
            print(f"| {model} | {kind} | {' | '.join(cells)} | {extra:+.1f} | {wall('off'):.1f} | {wall('otlp'):.1f} |")


if __name__ == "__main__":
    main()
