"""Every attempt's outcome reaches its deployment's breaker, whatever ends it (issue 19, items 1
and 7): a bug is an `internal_error` and a failure, a client that goes away is neither and gives
its half-open probe back, a malformed image URL is a 400 naming the parameter, and errors shown to
members name no internal address (the log does).

In-process gateways with an injected clock: no test sleeps or waits on a cool-down."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine import load_catalog
from engine.errors import GatewayError, InternalError, InvalidRequest
from engine.pipeline import gateway as gateway_module
from engine.pipeline.breaker import Breaker
from engine.pipeline.gateway import Gateway
from engine.pipeline.images import ImageFetcher
from engine.pipeline.upstream import Upstream

from .conftest import ROOT, free_port, provider_env
from .spec_trees import copy_models
from .test_resilience import FakeClock

SONNET = "anthropic/claude-sonnet-4-20250514"
HELLO = [{"role": "user", "content": "Hello"}]
CHAT = {"model": "solo", "messages": HELLO}
STREAM = {"model": "solo", "messages": HELLO, "stream": True}
INTERNAL = {"error": {"message": "Internal gateway error.", "type": "server_error", "param": None, "code": "internal_error"}}
SECRET_DETAIL = "parser bug near 10.9.8.7"  # what a bug says: the log's, never the member's


def routes(dead_port: int) -> dict[str, Any]:
    return {
        "defaults": {"retry": "false", "fallback": "false", "breaker": {"failures": 2, "cooldown": 10}},
        "aliases": {
            "solo": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
            "pictures": {"candidates": [{"provider": "gemini", "model": "gemini-2.5-flash"}]},
            "dead": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514",
                                     "api_base": f"http://127.0.0.1:{dead_port}"}]},
        },
    }


@pytest.fixture
def gw(tmp_path: Path, upstream) -> Gateway:
    import shutil

    shutil.copytree(ROOT / "providers.d", tmp_path / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tmp_path / "pricing.d")
    copy_models(tmp_path)
    dead_port = free_port()
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes(dead_port)))
    catalog = load_catalog(tmp_path, environ=provider_env(upstream.url))
    catalog.raise_for_problems()
    clock = FakeClock()
    gateway = Gateway(catalog, Upstream(), ImageFetcher(allowed_hosts=["127.0.0.1"]), sleep=clock.sleep, clock=clock)
    gateway.test_clock = clock  # type: ignore[attr-defined]
    gateway.dead_port = dead_port  # type: ignore[attr-defined]
    return gateway


def run(gateway: Gateway, scenario: Callable[[], Awaitable[None]]) -> None:
    async def go() -> None:
        try:
            await scenario()
        finally:
            await gateway.upstream.close()

    asyncio.run(go())


async def outcome(gateway: Gateway, body: dict[str, Any]) -> Any:
    """The result of a non-stream request, or the GatewayError it ended with."""
    try:
        return await gateway.chat(body)
    except GatewayError as error:
        return error


async def open_breaker(gateway: Gateway, upstream) -> Breaker:
    """Two overloaded replies open the breaker; the cool-down then passes (half-open)."""
    breaker = gateway.router.breakers[SONNET]
    for _ in range(2):
        upstream.reply_fixture("anthropic", "error_529_overloaded.json")
        assert (await outcome(gateway, CHAT)).kind == "overloaded"
    assert breaker.state == "open"
    gateway.test_clock.now += 10  # type: ignore[attr-defined]
    upstream.clear()
    return breaker


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET_DETAIL)


def error_events(sse: bytes) -> list[Any]:
    """The `{"error": ...}` events of an OpenAI SSE body."""
    frames = [frame.removeprefix(b"data: ") for frame in sse.strip().split(b"\n\n")]
    return [event for event in (json.loads(f) for f in frames if f.startswith(b"{")) if "error" in event]


def reads_then_boom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream's reads go through to the end, then a bug: after the first byte reached the client."""
    real = Gateway._reads

    async def reads(self: Gateway, *args: Any) -> AsyncIterator[Any]:
        async for batch in real(self, *args):
            yield batch
        raise RuntimeError(SECRET_DETAIL)

    monkeypatch.setattr(Gateway, "_reads", reads)


# -- the breaker itself -------------------------------------------------------------------------------
def test_release_gives_back_only_a_half_open_probe():
    now = [0.0]
    breaker = Breaker(failures_to_open=1, cooldown=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    assert breaker.allow() and not breaker.allow()  # the probe, and only one
    breaker.record(None, probe=False)  # a request that was not the probe proves nothing either way
    assert not breaker.allow()
    breaker.record(None, probe=True)
    assert breaker.state == "half_open" and breaker.allow()  # the next request probes instead

    closed = Breaker(failures_to_open=3)
    closed.record_failure()
    closed.record(None, probe=False)
    assert closed.state == "closed" and closed.consecutive_failures == 1


# -- a bug during an attempt ----------------------------------------------------------------------------
def test_a_probe_that_hits_a_bug_fails_and_the_breaker_recovers(gw, upstream, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, "gaud.gateway")

    async def scenario() -> None:
        breaker = await open_breaker(gw, upstream)
        with monkeypatch.context() as patched:
            patched.setattr(gateway_module, "build_request", boom)
            error = await outcome(gw, CHAT)
        assert isinstance(error, InternalError)
        assert (error.status, error.to_openai()) == (500, INTERNAL)
        assert upstream.requests == []
        # The failed probe opened it again, and gave the probe back: no deployment is stuck.
        assert breaker.state == "open" and not breaker.probe_in_flight
        assert (await outcome(gw, CHAT)).kind == "overloaded"  # still cooling down: not called
        assert upstream.requests == []

        gw.test_clock.now += 10
        upstream.reply_fixture("anthropic", "messages_text.json")
        result = await outcome(gw, CHAT)
        assert result.headers["x-gaud-deployment"] == SONNET
        assert breaker.state == "closed"
        assert gw.router.in_flight[SONNET] == 0

    run(gw, scenario)
    assert SECRET_DETAIL in caplog.text


def test_a_bug_in_a_closed_breaker_counts_as_a_failure(gw, upstream, monkeypatch):
    async def scenario() -> None:
        breaker = gw.router.breakers[SONNET]
        monkeypatch.setattr(gateway_module, "completion_from_reply", boom)
        for _ in range(2):
            upstream.reply_fixture("anthropic", "messages_text.json")
            assert (await outcome(gw, CHAT)).kind == "internal_error"
        assert breaker.state == "open"

    run(gw, scenario)


def test_a_stream_probe_that_hits_a_bug_after_its_first_byte(gw, upstream, monkeypatch):
    async def scenario() -> None:
        breaker = await open_breaker(gw, upstream)
        reads_then_boom(monkeypatch)
        upstream.reply_fixture("anthropic", "stream_text.sse")
        result = await gw.chat_stream(STREAM)
        first = await anext(result.body)
        # The stream is still the probe until it ends: nothing else probes meanwhile.
        assert first and breaker.state == "half_open" and breaker.probe_in_flight
        rest = b"".join([piece async for piece in result.body])
        assert error_events(rest) == [INTERNAL]
        assert SECRET_DETAIL.encode() not in first + rest
        assert breaker.state == "open" and not breaker.probe_in_flight

    run(gw, scenario)


def test_a_stream_probe_closes_the_breaker_when_it_ends(gw, upstream):
    async def scenario() -> None:
        breaker = await open_breaker(gw, upstream)
        upstream.reply_fixture("anthropic", "stream_text.sse")
        result = await gw.chat_stream(STREAM)
        pieces = [piece async for piece in result.body]
        assert b"".join(pieces).endswith(b"data: [DONE]\n\n") and not error_events(b"".join(pieces))
        assert breaker.state == "closed"

    run(gw, scenario)


# -- a client that goes away ------------------------------------------------------------------------
async def cancelled_while_waiting(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-stream request whose upstream never answers, cancelled as a client disconnect is."""
    waiting = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        await asyncio.Event().wait()

    with monkeypatch.context() as patched:
        patched.setattr(gateway.upstream, "send", never)
        task = asyncio.ensure_future(gateway.chat(CHAT))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_disconnect_is_neither_success_nor_failure(gw, upstream, monkeypatch):
    async def scenario() -> None:
        breaker = gw.router.breakers[SONNET]
        upstream.reply_fixture("anthropic", "error_529_overloaded.json")
        await outcome(gw, CHAT)
        assert breaker.consecutive_failures == 1
        await cancelled_while_waiting(gw, monkeypatch)
        assert (breaker.state, breaker.consecutive_failures) == ("closed", 1)
        assert gw.router.in_flight[SONNET] == 0

    run(gw, scenario)


def test_a_disconnected_probe_is_released(gw, upstream, monkeypatch):
    async def scenario() -> None:
        breaker = await open_breaker(gw, upstream)
        await cancelled_while_waiting(gw, monkeypatch)
        assert breaker.state == "half_open" and not breaker.probe_in_flight
        upstream.reply_fixture("anthropic", "messages_text.json")
        assert (await outcome(gw, CHAT)).headers["x-gaud-deployment"] == SONNET  # the next request probes
        assert breaker.state == "closed"

    run(gw, scenario)


@pytest.mark.parametrize("read_first", [True, False], ids=["mid-stream", "before-the-first-read"])
def test_a_stream_closed_by_its_client_releases_the_probe(gw, upstream, read_first):
    async def scenario() -> None:
        breaker = await open_breaker(gw, upstream)
        upstream.reply_fixture("anthropic", "stream_text.sse")
        result = await gw.chat_stream(STREAM)
        if read_first:
            assert await anext(result.body)
        assert breaker.probe_in_flight
        await result.body.aclose()  # what the web layer does when its client goes away
        assert breaker.state == "half_open" and not breaker.probe_in_flight

    run(gw, scenario)


# -- image URLs ---------------------------------------------------------------------------------------
PARAM = "messages[0].content[1].image_url.url"


def picture(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "pictures", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize("url", [
    "http://example.com:99999/a.png",
    "http://[::1/a.png",
    "http:///a.png",
    "https://example.com:port/a.png",
    "http://127.0.0.1:0/a.png",
])
def test_a_malformed_image_url_is_a_400_naming_it(gw, upstream, url):
    async def scenario() -> None:
        error = await outcome(gw, picture(url))
        assert isinstance(error, InvalidRequest), error
        assert (error.status, error.param) == (400, PARAM)
        assert error.message.startswith(PARAM)
        assert upstream.requests == []
        assert gw.router.breakers["gemini/gemini-2.5-flash"].consecutive_failures == 0

    run(gw, scenario)


def test_a_request_refused_before_the_upstream_proves_nothing_to_a_half_open_breaker(gw, upstream):
    """A malformed image URL (refused by the gateway, no upstream contact) neither closes a
    half-open breaker nor keeps its probe: the next request probes the deployment itself."""
    async def scenario() -> None:
        breaker = gw.router.breakers["gemini/gemini-2.5-flash"]
        breaker.record_failure()
        breaker.record_failure()
        assert breaker.state == "open"
        gw.test_clock.now += 10  # type: ignore[attr-defined]
        error = await outcome(gw, picture("http://[::1/a.png"))
        assert isinstance(error, InvalidRequest) and upstream.requests == []
        assert breaker.state == "half_open" and not breaker.probe_in_flight
        assert breaker.consecutive_failures == 2

    run(gw, scenario)


@pytest.mark.parametrize("location", ["ftp://example.com/a.png", "http://[::1/a.png", "http://127.0.0.1:99999/a.png"])
def test_a_redirect_to_a_malformed_url_is_a_400_naming_it(gw, upstream, location):
    async def scenario() -> None:
        upstream.reply(status=302, headers={"location": location})
        error = await outcome(gw, picture(f"{upstream.url}/cat.png"))
        assert isinstance(error, InvalidRequest), error
        assert (error.status, error.param) == (400, PARAM)
        assert [r.path for r in upstream.requests] == ["/cat.png"]  # the image; the model was never called

    run(gw, scenario)


def test_unfetchable_image_urls_read_the_same_whatever_the_reason(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "gaud.images")
    answers = {
        "nowhere.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "intranet.example": [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 443))],
    }

    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: str, *args: Any, **kwargs: Any) -> Any:
        answer = answers.get(host)
        if answer is None:  # an address literal: no resolver involved
            return await real(self, host, *args, **kwargs)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)
    refused = f"http://127.0.0.1:{free_port()}/a.png"

    async def messages() -> list[str]:
        found = []
        for fetcher, url in [(ImageFetcher(), "http://nowhere.example/a.png"),
                             (ImageFetcher(), "http://intranet.example/a.png"),
                             (ImageFetcher(), "http://127.0.0.1/a.png"),
                             (ImageFetcher(allowed_hosts=["127.0.0.1"]), refused)]:
            with pytest.raises(InvalidRequest) as raised:
                await fetcher.fetch(url, "image")
            assert raised.value.param == "image"
            found.append(raised.value.message)
        return found

    assert set(asyncio.run(messages())) == {"image: the image URL cannot be fetched"}
    assert "Name or service not known" in caplog.text and "10.1.2.3" in caplog.text
    assert "127.0.0.1" in caplog.text


# -- connection errors ----------------------------------------------------------------------------------
def test_connection_refused_names_no_address_to_the_member(gw, upstream, caplog):
    caplog.set_level(logging.WARNING, "gaud.upstream")

    async def scenario() -> None:
        error = await outcome(gw, {"model": "dead", "messages": HELLO})
        assert error.kind == "connection"
        shown = json.dumps(error.to_openai())
        assert "127.0.0.1" not in shown and str(gw.dead_port) not in shown
        assert error.message == "Cannot connect to the upstream."

    run(gw, scenario)
    assert f"127.0.0.1:{gw.dead_port}" in caplog.text
    assert "key=" not in caplog.text and "/v1/messages" not in caplog.text  # the origin only


# -- the web layer: JSON 500 internal_error, audited ------------------------------------------------
@pytest.fixture
def app(catalog, upstream, tmp_path, monkeypatch):
    """An in-process app; `app.audited` collects the audit records it writes."""
    from engine.config import load_settings
    from engine.web.server import create_app

    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"})
    built = create_app(catalog, settings)
    built.audited = []  # type: ignore[attr-defined]
    writer = built.state.audit
    real_add = writer.add

    def add(record: dict[str, Any], *journaled: Any) -> Awaitable[None]:
        built.audited.append(record)  # type: ignore[attr-defined]
        return real_add(record, *journaled)  # type: ignore[no-any-return]

    monkeypatch.setattr(writer, "add", add)
    return built


def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gaud") as client:
                return await client.post(path, json=body)

    return asyncio.run(go())


GPT = [{"role": "user", "content": "Hello"}]
OPENAI_REPLY = json.loads((ROOT / "tests/providers/openai/replies/chat_completion_text.json").read_text())


@pytest.mark.parametrize("case", ["chat", "stream", "embeddings", "outside the gateway"])
def test_a_bug_is_a_json_500_internal_error_and_audited(app, upstream, monkeypatch, caplog, case):
    from engine.pipeline.stages import Pipeline

    path, body = "/v1/chat/completions", {"model": "gpt-4o", "messages": GPT}
    if case == "chat":
        upstream.reply(json=OPENAI_REPLY)
        monkeypatch.setattr(gateway_module, "completion_from_reply", boom)
    elif case == "stream":  # before its first byte
        body["stream"] = True
        monkeypatch.setattr(gateway_module, "build_request", boom)
    elif case == "embeddings":
        path, body = "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}
        upstream.reply_fixture("openai", "embeddings.json")
        monkeypatch.setattr(gateway_module, "embeddings_from_reply", boom)
    else:
        monkeypatch.setattr(Pipeline, "budget_warning", boom)
    response = post(app, path, body)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == INTERNAL
    (record,) = app.audited
    assert (record["status"], record["error_kind"]) == (500, "internal_error")
    assert SECRET_DETAIL in caplog.text


def test_a_bug_after_the_first_byte_is_an_sse_error_event(app, upstream, monkeypatch):
    reads_then_boom(monkeypatch)
    upstream.reply_fixture("openai", "stream_text.sse")
    response = post(app, "/v1/chat/completions", {"model": "gpt-4o", "messages": GPT, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.content.startswith(b'data: {"id"')  # chunks went out before the bug
    assert error_events(response.content) == [INTERNAL]
    assert SECRET_DETAIL.encode() not in response.content
    (record,) = app.audited
    assert record["error_kind"] == "internal_error"
