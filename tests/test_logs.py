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
