"""Logging: one JSON object per line for machines, plain text in a terminal.

`log.format: auto` picks text when stderr is a terminal and JSON otherwise. Request lines carry
their fields in `extra={"fields": {...}}`; no message contents or secrets are ever put there.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

import orjson

__all__ = ["BatchingStreamHandler", "FieldLogger", "JsonFormatter", "TextFormatter", "configure_logging", "logging_from_settings"]


class JsonFormatter(logging.Formatter):
    _second = -1
    _second_text = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname.lower(), record.name, record.getMessage(),
                         fields if isinstance(fields, dict) else None, exc)

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any] | None, exc: str | None = None
    ) -> str:
        """One JSON log line; also what FieldLogger writes without a LogRecord."""
        line: dict[str, Any] = {"ts": self._timestamp(created), "level": level, "logger": logger, "msg": message}
        if fields:
            line.update(fields)
        if exc:
            line["exc"] = exc
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return text


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: at most one write per `interval` seconds for info and below.

    One request line per request made the write(2) behind it a tenth of a worker's CPU under
    load. Warnings and errors are written at once (with everything before them, in order), and
    so is all that is pending when the process exits (logging.shutdown flushes handlers).
    """

    def __init__(self, stream: IO[str], interval: float) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract: a bad record must not raise
            self.handleError(record)
            return
        self._add(line, record.levelno >= logging.WARNING)

    def add_line(self, line: str) -> None:
        """Queue an info line formatted elsewhere (FieldLogger)."""
        with self.lock:  # type: ignore[union-attr]
            self._add(line, False)

    def _add(self, line: str, urgent: bool) -> None:
        self._pending.append(line)
        if urgent or len(self._pending) >= 1000:
            self.flush()
        elif self._timer is None:
            self._timer = threading.Timer(self.interval, self._flush_later)
            self._timer.daemon = True
            self._timer.start()

    def _flush_later(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._timer = None
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                lines, self._pending = self._pending, []
                try:
                    self.stream.write("\n".join(lines) + "\n")
                except Exception:  # noqa: BLE001 - closed or broken stream at exit
                    return  # the stream is gone (closed at exit): nothing to write to
            super().flush()


class FieldLogger:
    """`logger.info(message, extra={"fields": fields})` for a line written on every request.

    Through the logging module a line costs ~7 us (record, handler chain, locks, formatting);
    when the line would only reach the batching JSON handler anyway, it is formatted and queued
    directly (~2 us). Any other set-up (own handlers or filters, text format, a test's capture
    handler) goes through logging as usual.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def info(self, message: str, fields: dict[str, Any]) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._direct_handler()
        if handler is None:
            logger.info("%s", message, extra={"fields": fields})
            return
        formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
        handler.add_line(formatter.line(time.time(), "info", logger.name, message, fields))

    def _direct_handler(self) -> BatchingStreamHandler | None:
        """The root's batching JSON handler, when nothing else would see the line."""
        node: logging.Logger | None = self.logger
        while node is not None and node.parent is not None:  # up to, not including, the root
            if node.handlers or node.filters or node.disabled or not node.propagate:
                return None
            node = node.parent
        if node is None or node.filters or len(node.handlers) != 1:
            return None
        handler = node.handlers[0]
        if (type(handler) is not BatchingStreamHandler or handler.filters or handler.level > logging.INFO
                or type(handler.formatter) is not JsonFormatter):
            return None
        return handler


def configure_logging(level: str = "info", fmt: str = "auto", flush_interval: float = 0.0) -> None:
    """Log to stderr, as JSON lines or text; `flush_interval` > 0 batches info lines (see above)."""
    # Neither format prints the caller's file and line, thread or process: skip looking them up
    # for every record (the optimisations the logging documentation names; ~5 us a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler: logging.StreamHandler = (  # type: ignore[type-arg]
        BatchingStreamHandler(sys.stderr, flush_interval) if flush_interval > 0 else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def logging_from_settings(settings: Any) -> str:
    """configure_logging from the `log.*` settings; returns the level name (lower case)."""
    level = str(settings.get("log.level")).lower()
    configure_logging(level, str(settings.get("log.format")), float(settings.get("log.flush_interval") or 0))
    return level
