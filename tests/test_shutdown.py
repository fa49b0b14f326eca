"""Shutdown tells the truth: a real `python -m engine serve` against an upstream that stalls.

SIGTERM: requests still running at `server.shutdown_timeout` get a JSON 503 `shutdown` (an error
event on a stream already started, no [DONE]), and their audit rows say so: error kind `shutdown`,
with the status the client saw (503; 200 for a stream already started, as for any error event).
SIGKILL: with the audit journal, every accepted request has its row after the restart: the
records the writer held get written as they were, requests in flight become `interrupted` rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import sqlalchemy as sa
import yaml
from aiohttp import web

from engine.accounts.journal import JOURNAL_PATTERN
from engine.accounts.store import audit_log

from .conftest import RunningGateway, provider_env, start_gateway
from .fakes import LoopbackServer

MODEL = "openai/gpt-4o"
N = 3  # non-stream and stream requests each
SHUTDOWN_TIMEOUT = 1.0


def _chunk(delta: dict[str, Any]) -> bytes:
    chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


QUICK_REPLY = {
    "id": "chatcmpl-q", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Quick."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


class StallingUpstream:
    """An OpenAI-shaped upstream: a request whose last message says "quick" is answered at once;
    any other stalls (a stream after its first delta) until `release`. Counts arrivals."""

    def __init__(self) -> None:
        self._server = LoopbackServer()
        self._arrived = 0
        self._changed = threading.Condition()
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.url = self._server.serve(app)

    def wait_arrived(self, n: int, timeout: float = 20.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._arrived >= n, timeout):
                raise AssertionError(f"{self._arrived} of {n} requests reached the upstream in {timeout} s")

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        self._server.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self._release is None:
            self._loop, self._release = asyncio.get_running_loop(), asyncio.Event()
        quick = body["messages"][-1]["content"] == "quick"
        with self._changed:
            self._arrived += 1
            self._changed.notify_all()
        if quick:
            return web.json_response(QUICK_REPLY)
        if not body.get("stream"):
            await self._release.wait()
            return web.json_response(QUICK_REPLY)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk({"role": "assistant", "content": ""}) + _chunk({"content": "Hel"}))
        await self._release.wait()
        return response


@pytest.fixture
def stalling() -> Any:
    fake = StallingUpstream()
    fake.start()
    yield fake
    fake.stop()


def _start(tmp_path: Path, upstream: StallingUpstream, **audit: Any) -> RunningGateway:
    config = tmp_path / "gaud.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"shutdown_timeout": SHUTDOWN_TIMEOUT},
        "auth": {"enabled": False},
        "database": {"url": f"sqlite:///{tmp_path / 'gaud.db'}"},
        "audit": audit,
    }))
    return start_gateway(provider_env(upstream.url), tmp_path / f"gateway-{time.monotonic_ns()}.log", "-c", str(config))


def _rows(tmp_path: Path) -> list[dict[str, Any]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gaud.db'}")
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.select(audit_log).order_by(audit_log.c.id))]
    finally:
        engine.dispose()


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def _stream(http: httpx.AsyncClient, path: str, body: dict[str, Any], started: asyncio.Event) -> bytes:
    """A stream's whole body; `started` is set once its first bytes arrived."""
    received = b""
    async with http.stream("POST", path, json=body, headers={"x-request-id": body["messages"][0]["content"]}) as response:
        assert response.status_code == 200
        async for piece in response.aiter_bytes():
            received += piece
            started.set()
    return received


# -- SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_ends_requests_past_the_shutdown_timeout_with_503_and_audits_them(stalling, tmp_path):
    running = _start(tmp_path, stalling)
    outcome = asyncio.run(_sigterm_with_requests_in_flight(running, stalling))
    assert running.process.wait(20) == 0, running.logs()[-3000:]
    elapsed, errors, streams, messages = outcome

    assert elapsed >= SHUTDOWN_TIMEOUT  # the requests had their time first
    for error in errors:  # the official SDK sees a JSON 503 with the shutdown code
        assert isinstance(error, openai.APIStatusError), error
        assert error.status_code == 503
        assert error.response.headers["content-type"] == "application/json"
        assert error.body["code"] == "shutdown" and error.body["type"] == "server_error"
    for body in streams:  # started streams end with an OpenAI error event, never [DONE]
        assert b"Hel" in body and b"[DONE]" not in body
        last = json.loads(body.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
        assert last["error"]["code"] == "shutdown"
    assert b"event: error" in messages and b"message_stop" not in messages  # the Anthropic format's own event
    assert '"type": "api_error"' in messages.decode().replace('":"', '": "')

    logs = running.logs()
    assert "timeout graceful shutdown exceeded" not in logs  # the gateway ended them, not uvicorn
    rows = _rows(tmp_path)
    assert len(rows) == 2 * N + 1
    # The status the client saw (a started stream's was 200), and the kind that says why it failed.
    assert sorted((r["stream"], r["status"], r["error_kind"]) for r in rows) == (
        [(False, 503, "shutdown")] * N + [(True, 200, "shutdown")] * (N + 1))
    assert all(r["attempts"] == 1 for r in rows)  # `shutdown` is never retried
    assert list(tmp_path.glob(JOURNAL_PATTERN)) == []  # a clean stop leaves no journal behind


async def _sigterm_with_requests_in_flight(
    running: RunningGateway, stalling: StallingUpstream
) -> tuple[float, list[BaseException], list[bytes], bytes]:
    sdk = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=30)
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        started = [asyncio.Event() for _ in range(N + 1)]
        calls = [asyncio.ensure_future(sdk.chat.completions.create(**_chat(f"json-{i}"))) for i in range(N)]
        streams = [asyncio.ensure_future(_stream(http, "/v1/chat/completions", _chat(f"s-{i}", stream=True), started[i]))
                   for i in range(N)]
        anthropic = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "a-0"}]}
        messages = asyncio.ensure_future(_stream(http, "/v1/messages", anthropic, started[N]))
        await asyncio.to_thread(stalling.wait_arrived, 2 * N + 1)
        for event in started:
            await event.wait()
        sent = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        errors = await asyncio.gather(*calls, return_exceptions=True)
        bodies = await asyncio.gather(*streams)
        elapsed = time.monotonic() - sent
        return elapsed, list(errors), bodies, await messages


# -- SIGKILL ---------------------------------------------------------------------------------------
def test_after_sigkill_every_accepted_request_has_its_audit_row(stalling, tmp_path):
    # Records wait up to 30 s in the writer's memory: without the journal a kill loses them all.
    running = _start(tmp_path, stalling, max_delay=30.0)
    done = [httpx.post(f"{running.url}/v1/chat/completions", json=_chat("quick"), headers={"x-request-id": f"done-{i}"},
                       timeout=10) for i in range(3)]
    assert [r.status_code for r in done] == [200] * 3
    in_flight = [threading.Thread(target=_ignore_errors, args=(running.url, _chat(f"k-{i}", stream=i == 1), f"kill-{i}"))
                 for i in range(2)]
    for thread in in_flight:
        thread.start()
    stalling.wait_arrived(5)
    assert _rows(tmp_path) == []  # nothing reached the database yet
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(10)
    for thread in in_flight:
        thread.join(10)
    assert len(list(tmp_path.glob(JOURNAL_PATTERN))) == 1

    again = _start(tmp_path, stalling)  # the start reconciles the dead process's journal
    try:
        rows = {r["request_id"]: r for r in _rows(tmp_path)}
        assert sorted(rows) == ["done-0", "done-1", "done-2", "kill-0", "kill-1"]
        for i in range(3):  # written as they were: status, usage and cost
            assert (rows[f"done-{i}"]["status"], rows[f"done-{i}"]["completion_tokens"]) == (200, 2)
            assert rows[f"done-{i}"]["cost"] > 0
        for i in range(2):
            row = rows[f"kill-{i}"]
            assert (row["status"], row["error_kind"], row["alias"], row["stream"]) == (503, "interrupted", MODEL, i == 1)
        # The dead journal is gone; the new process has its own.
        assert len(list(tmp_path.glob(JOURNAL_PATTERN))) == 1
    finally:
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(20) == 0
    assert len(_rows(tmp_path)) == 5  # nothing written twice
    assert list(tmp_path.glob(JOURNAL_PATTERN)) == []


def _ignore_errors(url: str, body: dict[str, Any], request_id: str) -> None:
    with contextlib.suppress(httpx.TransportError):  # the gateway is killed under it
        httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-request-id": request_id}, timeout=30)


def test_a_journal_line_torn_by_power_loss_is_skipped(tmp_path):
    from engine.accounts.journal import reconcile_journals
    from engine.accounts.store import Store

    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    store.migrate()
    record = {"request_id": "r1", "ts": 1000.5, "user_id": None, "user_name": "local", "status": 200, "cost": 0.1}
    accepted = {"request_id": "r2", "ts": 1001.0, "user_id": None, "user_name": "local", "alias": MODEL, "stream": False}
    store.write_audit([record])  # committed, but killed before its done line
    (tmp_path / "gaud-journal-x.jsonl").write_bytes(
        b'{"n":1,"r":%b}\n{"n":2,"a":%b}\n{"n":3,"a":{"request_id":"r3","ts":1002.0,' % (orjson.dumps(record), orjson.dumps(accepted)))
    assert reconcile_journals(store, tmp_path) == 1
    rows = store.audit_records()
    assert [(r["request_id"], r["status"], r["error_kind"]) for r in rows] == [("r1", 200, None), ("r2", 503, "interrupted")]
    assert not (tmp_path / "gaud-journal-x.jsonl").exists()
    store.close()
