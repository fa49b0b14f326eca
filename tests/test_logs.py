"""Request log lines are written in batches; warnings and errors at once, in order."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from engine.logs import BatchingStreamHandler, JsonFormatter


@pytest.fixture
def logger_to():
    made: list[logging.Logger] = []

    def make(handler: logging.Handler) -> logging.Logger:
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger(f"gaud.test.batching.{len(made)}.{id(handler)}")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        made.append(logger)
        return logger

    yield make
    for logger in made:
        for handler in logger.handlers:
            handler.close()
        logger.handlers[:] = []


def _messages(text: str) -> list[str]:
    return [json.loads(line)["msg"] for line in text.splitlines()]


def test_info_lines_wait_and_a_warning_writes_everything_in_order(logger_to):
    stream = io.StringIO()
    log = logger_to(BatchingStreamHandler(stream, interval=60))
    log.info("request 1")
    log.info("request 2")
    assert stream.getvalue() == ""  # one write later, not one per line
    log.warning("upstream overloaded")
    assert _messages(stream.getvalue()) == ["request 1", "request 2", "upstream overloaded"]


def test_pending_lines_are_written_after_the_interval(logger_to):
    stream = io.StringIO()
    log = logger_to(BatchingStreamHandler(stream, interval=0.05))
    log.info("request 1")
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)  # polls for the handler's own timer
    assert _messages(stream.getvalue()) == ["request 1"]


def test_flush_and_a_full_batch_write_at_once(logger_to):
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=60)
    log = logger_to(handler)
    log.info("only line")
    handler.flush()  # what logging.shutdown does at exit
    assert _messages(stream.getvalue()) == ["only line"]
    for i in range(1000):
        log.info("line %d", i)
    assert len(stream.getvalue().splitlines()) == 1001


def test_a_closed_stream_loses_no_exception(logger_to):
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=60)
    log = logger_to(handler)
    log.info("late line")
    stream.close()
    handler.flush()  # at interpreter exit stderr may be gone: no traceback


@pytest.fixture
def root_logging():
    """The root logger configured as `serve` does (JSON, batched), restored afterwards."""
    from engine.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", "json", 60.0)  # (pytest adds its capture handlers back per test phase)
    handler = root.handlers[0]
    stream = io.StringIO()
    handler.stream = stream
    yield root, handler, stream
    handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


FIELDS = {"request_id": "r1", "status": 200, "cost": 0.5, "ttft_ms": None, "stream": False}


def test_field_lines_match_what_logging_writes(root_logging):
    from engine.logs import FieldLogger

    root, handler, stream = root_logging
    root.handlers[:] = [handler]  # without pytest's capture handlers
    fast = FieldLogger("gaud.test.fields")
    assert fast._direct_handler() is handler  # the direct path is the one taken here
    fast.info("200 a b", FIELDS)
    logging.getLogger("gaud.test.fields").info("%s", "200 a b", extra={"fields": FIELDS})
    handler.flush()
    direct, logged = (json.loads(line) for line in stream.getvalue().splitlines())
    assert direct.pop("ts")[:19] == logged.pop("ts")[:19]
    assert direct == logged == {"level": "info", "logger": "gaud.test.fields", "msg": "200 a b", **FIELDS}


def test_field_lines_go_through_logging_when_anything_else_listens(root_logging):
    from engine.logs import FieldLogger

    root, handler, _ = root_logging
    root.handlers[:] = [handler]
    name = "gaud.test.fields.listened"
    fast = FieldLogger(name)
    captured: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = captured.append  # type: ignore[method-assign]
    logging.getLogger(name).addHandler(listener)
    try:
        assert fast._direct_handler() is None
        fast.info("seen", FIELDS)
        assert [r.getMessage() for r in captured] == ["seen"] and captured[0].fields == FIELDS  # type: ignore[attr-defined]
    finally:
        logging.getLogger(name).removeHandler(listener)
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert fast._direct_handler() is None  # not the JSON format: logging formats it
    logging.getLogger(name).setLevel(logging.WARNING)
    try:
        fast.info("quiet", FIELDS)
    finally:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert captured[-1].getMessage() == "seen"
