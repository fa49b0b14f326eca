"""Slow and stuck clients against a real `serve` process (issue 19, item 4): headers or a body sent
a byte at a time, a connection that sends nothing, a stream client that stops reading. Each ends
within its configured limit (server.header_timeout, body_timeout, send_timeout); valid requests,
including slow ones inside the limits, are served as before."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from .conftest import RunningGateway, provider_env, spec_tree, start_gateway
from .fakes import LoopbackServer

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
SEND_TIMEOUT = 1.0
#: How late past its limit a closed connection or a 408 may come (a loaded 2-core machine).
SLACK = 3.0

COMPLETION = {
    "id": "chatcmpl-slow", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    chunk: dict[str, Any] = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


BIG_FRAME = _chunk({"content": "x" * 8192})


class StreamingUpstream:
    """An OpenAI-style upstream whose streams, for the prompt "stall", never end: it writes as fast
    as the gateway takes its bytes, and counts them."""

    def __init__(self) -> None:
        self.sent = 0
        self.gone = threading.Event()
        self._server = LoopbackServer()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.url = self._server.serve(app)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(COMPLETION)
        endless = body["messages"][-1]["content"] == "stall"
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        finished = False
        try:
            for _ in range(10**9 if endless else 3):
                await response.write(BIG_FRAME)
                self.sent += len(BIG_FRAME)
            await response.write(_chunk({}, "stop", {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            finished = True
        finally:
            if not finished:
                self.gone.set()
        return response

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[StreamingUpstream]:
    upstream = StreamingUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(slow_upstream: StreamingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("slow")
    env = {
        "GAUD_SPECS_DIR": str(spec_tree(tmp, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "false",
        "GAUD_SERVER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "GAUD_SERVER_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "GAUD_SERVER_SEND_TIMEOUT": str(SEND_TIMEOUT),
        **provider_env(slow_upstream.url),
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield running
    running.process.terminate()
    running.process.wait(10)


# -- a raw HTTP client ------------------------------------------------------------------------------
def _connect(gateway: RunningGateway, **options: int) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.socket()
    for option, value in options.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
    sock.connect((host, int(port)))
    return sock


def _head(path: str, length: int, request_id: str, **extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: gateway", "content-type: application/json",
             f"content-length: {length}", f"x-request-id: {request_id}", *(f"{k}: {v}" for k, v in extra.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> float:
    """Send `data` a byte every `every` s until the gateway answers or closes (or `limit` s pass);
    returns when the gateway's first bytes (or its close) arrived, measured from the first byte sent."""
    start = time.monotonic()
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        if select.select([sock], [], [], every)[0]:
            return time.monotonic() - start
    remaining = max(0.0, start + limit - time.monotonic())
    assert select.select([sock], [], [], remaining)[0], f"the gateway neither answered nor closed within {limit} s"
    return time.monotonic() - start


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the gateway closes. A close with bytes of ours still unread there arrives
    as a reset (after what it sent, which Linux still delivers)."""
    sock.settimeout(10)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def _audit_status(gateway: RunningGateway, request_id: str, timeout: float = 10.0) -> int:
    """The status in the request's audit row, once the batch holding it is written."""
    database = Path(gateway.log_path.parent / "gaud.db")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as conn:
            row = conn.execute("SELECT status FROM audit_log WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.05)  # polling the database the gateway writes in batches, not waiting for readiness
    raise AssertionError(f"no audit row for {request_id} within {timeout} s")


CHAT = json.dumps({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}).encode()


# -- the body ---------------------------------------------------------------------------------------
def test_a_body_sent_a_byte_every_two_tenths_of_a_second_gets_a_408_after_body_timeout(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", len(CHAT), "slow-body-1"))
        waited = _trickle(sock, CHAT, every=0.2, limit=BODY_TIMEOUT + SLACK)
        status, headers, body = _response(_read_all(sock))  # and the gateway closes the connection
    assert status == 408
    assert BODY_TIMEOUT - 0.2 <= waited <= BODY_TIMEOUT + SLACK
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": {
        "message": f"The request body was not received within {BODY_TIMEOUT:g} s.",
        "type": "invalid_request_error", "param": None, "code": "request_timeout"}}
    assert _audit_status(gateway, "slow-body-1") == 408


def test_a_body_that_stops_after_a_few_bytes_gets_a_408_too(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", len(CHAT), "slow-body-2") + CHAT[:10])
        start = time.monotonic()
        assert select.select([sock], [], [], BODY_TIMEOUT + SLACK)[0]
        status, _, _ = _response(_read_all(sock))
    assert status == 408 and time.monotonic() - start <= BODY_TIMEOUT + SLACK


def test_admin_routes_bound_their_body_too(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/admin/keys", 100, "slow-admin-1") + b'{"user"')
        assert select.select([sock], [], [], BODY_TIMEOUT + SLACK)[0]
        status, _, body = _response(_read_all(sock))
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"


def test_a_dashboard_form_sent_too_slowly_gets_a_408_page(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/ui/keys", 100, "slow-form-1", **{"content-type": "application/x-www-form-urlencoded"})
                     .replace(b"content-type: application/json\r\n", b"") + b"user=a")
        assert select.select([sock], [], [], BODY_TIMEOUT + SLACK)[0]
        status, _, body = _response(_read_all(sock))
    assert status == 408 and b"The form was not received in time." in body


def test_a_body_sent_in_pieces_within_the_limit_is_served(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", len(CHAT), "slow-body-ok"))
        for piece in (CHAT[:20], CHAT[20:40], CHAT[40:]):
            assert not select.select([sock], [], [], 0.2)[0], "the gateway answered an unfinished body"
            sock.sendall(piece)
        status, _, body = _response(_read_some(sock))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "hi"


def _read_some(sock: socket.socket) -> bytes:
    """A keep-alive response: read until the body its content-length announces is in."""
    sock.settimeout(10)
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
        chunk = sock.recv(65536)
        assert chunk, "the gateway closed a keep-alive connection"
        raw += chunk
    return raw


def _length(raw: bytes) -> int:
    return int(_response(raw)[1].get("content-length", "0"))


# -- the headers ------------------------------------------------------------------------------------
def test_headers_sent_a_byte_every_two_tenths_of_a_second_get_a_408_and_the_connection_closed(gateway):
    request = _head("/v1/chat/completions", len(CHAT), "slow-head-1", **{"x-pad": "a" * 200})
    with _connect(gateway) as sock:
        waited = _trickle(sock, request, every=0.2, limit=HEADER_TIMEOUT + SLACK)
        status, headers, body = _response(_read_all(sock))
    assert status == 408
    assert HEADER_TIMEOUT - 0.2 <= waited <= HEADER_TIMEOUT + SLACK
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == {
        "message": f"The request headers were not received within {HEADER_TIMEOUT:g} s.",
        "type": "invalid_request_error", "param": None, "code": "request_timeout"}
    assert "request headers not received" in gateway.logs_with("request headers not received")


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(gateway):
    with _connect(gateway) as sock:
        start = time.monotonic()
        assert select.select([sock], [], [], HEADER_TIMEOUT + SLACK)[0], "the idle connection was kept open"
        assert _read_all(sock) == b""  # closed, without an answer to a request never made
    assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - start <= HEADER_TIMEOUT + SLACK


def test_the_next_request_on_a_kept_alive_connection_has_header_timeout_too(gateway):
    with _connect(gateway) as sock:
        sock.sendall(_head("/v1/chat/completions", len(CHAT), "keep-1") + CHAT)
        assert _response(_read_some(sock))[0] == 200
        waited = _trickle(sock, _head("/v1/chat/completions", len(CHAT), "keep-2"), every=0.2,
                          limit=HEADER_TIMEOUT + SLACK)
        assert _response(_read_all(sock))[0] == 408
    assert waited <= HEADER_TIMEOUT + SLACK


def test_requests_on_a_kept_alive_connection_past_header_timeout_are_served(gateway):
    """The limit is per request, not per connection: a connection used for longer is fine."""
    with _connect(gateway) as sock:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < HEADER_TIMEOUT * 1.5:
            n += 1
            sock.sendall(_head("/v1/chat/completions", len(CHAT), f"keep-ok-{n}") + CHAT)
            assert _response(_read_some(sock))[0] == 200
            select.select([sock], [], [], 0.3)  # idle between requests, inside the keep-alive timeout
    assert n >= 3


# -- reading a stream -------------------------------------------------------------------------------
def test_a_stream_client_that_stops_reading_is_cut_after_send_timeout_and_audited_as_gone(gateway, slow_upstream):
    """The client reads the first bytes, then nothing. The gateway stops reading the upstream
    once buffers fill (memory stays bounded), ends the request send_timeout later, closes the
    upstream stream and audits 499."""
    request = json.dumps({"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "stall"}]})
    rss_before = _rss(gateway)
    slow_upstream.gone.clear()
    with _connect(gateway, SO_RCVBUF=4096) as sock:
        sock.sendall(_head("/v1/chat/completions", len(request), "stalled-reader-1") + request.encode())
        assert select.select([sock], [], [], 10)[0]
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        start = time.monotonic()  # from here on the client reads nothing
        assert slow_upstream.gone.wait(SEND_TIMEOUT + 10), "the gateway still relays to a client that reads nothing"
        ended = time.monotonic() - start
    assert _audit_status(gateway, "stalled-reader-1") == 499
    # What the upstream could write is what the socket buffers on the way hold (loopback
    # autotuning: up to tcp_rmem's 32 MiB here) plus the relay's 64 KiB buffers: bounded, while
    # an unthrottled relay would have taken gigabytes in that time.
    assert slow_upstream.sent < 64 * 2**20, slow_upstream.sent
    assert _rss(gateway) - rss_before < 32 * 2**20
    assert ended <= SEND_TIMEOUT + 10
    print(f"stalled reader: cut after {ended:.2f} s; the upstream wrote {slow_upstream.sent / 2**20:.1f} MiB; "
          f"gateway RSS {(rss_before) / 2**20:.1f} -> {_rss(gateway) / 2**20:.1f} MiB")


def _rss(gateway: RunningGateway) -> int:
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def test_valid_requests_and_streams_are_unaffected(gateway):
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)
    reply = client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].message.content == "hi"
    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "Hello"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "x" * 8192 * 3
    assert httpx.get(f"{gateway.url}/health").status_code == 200


def test_a_slow_reader_that_keeps_reading_gets_the_whole_stream(gateway, slow_upstream):
    """A reader slower than the upstream, pausing less than send_timeout each time, is not cut."""
    request = json.dumps({"model": "openai/gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]})
    with _connect(gateway, SO_RCVBUF=4096) as sock:
        sock.sendall(_head("/v1/chat/completions", len(request), "slow-reader-ok") + request.encode())
        received = b""
        while not received.endswith(b"0\r\n\r\n"):
            select.select([], [], [], 0.05)  # reading slowly is the behaviour under test
            chunk = sock.recv(2048)
            assert chunk, "the gateway cut a client that was reading"
            received += chunk
    assert b"data: [DONE]" in received
    assert received.count(b"x" * 8192) == 3



# -- in-process: the deadline sweeper ---------------------------------------------------------------
def test_body_deadlines_hold_in_each_event_loop_they_serve():
    """One BodyDeadlines serves every read of a process; in-process tests run several loops in turn."""
    from engine.errors import InvalidRequest
    from engine.web.asgi import BodyDeadlines, BodyLimit, read_body

    limit = BodyLimit(1024, BodyDeadlines(0.2))

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def complete() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def read(receive: Any) -> bytes:
        return await read_body({"content-type": "application/json"}, receive, limit)

    for _ in range(2):  # a second loop: the first one's timer died with it
        assert asyncio.run(read(complete)) == b"{}"
        start = time.monotonic()
        with pytest.raises(InvalidRequest) as caught:
            asyncio.run(asyncio.wait_for(read(never), 5))
        assert caught.value.status == 408 and caught.value.code == "request_timeout"
        assert 0.2 <= time.monotonic() - start <= 0.2 + 0.05 + SLACK
    assert not limit.deadlines.expired  # nothing left behind
