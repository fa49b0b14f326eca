"""Deadlines (upstream.total_timeout, idle_timeout, request_deadline; per-deployment overrides)
against a local upstream that pings forever, trickles a JSON body, stalls after the first delta or
streams slowly. Every request must end, within a generous bound, as a reply or a clean
OpenAI-style timeout error; retries and fallbacks must keep to the request's deadline.

The limits are small (idle 0.5 s, total 1.5 s, request 3 s); each assertion on time is an upper
bound far above them (a request that is never cut would hang), never a measure of speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from aiohttp import web

from engine import load_catalog
from engine.errors import GatewayError, Overloaded, UpstreamTimeout
from engine.pipeline.deadlines import Deadlines
from engine.pipeline.gateway import Gateway
from engine.pipeline.upstream import Upstream

from .conftest import RunningGateway, provider_env, spec_tree, start_gateway
from .fakes import LoopbackServer

IDLE, TOTAL, REQUEST = 0.5, 1.5, 3.0
#: A request that is cut by its deadline ends well within this; one that is not never ends.
BOUND = 10.0
HELLO = [{"role": "user", "content": "Hello"}]


# -- the upstream -----------------------------------------------------------------------------------
def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


ANTHROPIC_START = [
    anthropic_event("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
]
ANTHROPIC_PING = anthropic_event("ping", {})
OPENAI_PING = b": ping\n\n"


def first_frames(anthropic: bool, text: str) -> list[bytes]:
    if anthropic:
        return [*ANTHROPIC_START, anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})]
    return [openai_chunk({"role": "assistant", "content": ""}), openai_chunk({"content": text})]


def delta(anthropic: bool, text: str) -> bytes:
    if anthropic:
        return anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
    return openai_chunk({"content": text})


def last_frames(anthropic: bool) -> list[bytes]:
    if anthropic:
        return [anthropic_event("content_block_stop", {"index": 0}),
                anthropic_event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
                anthropic_event("message_stop", {})]
    return [openai_chunk({}, "stop"), b"data: [DONE]\n\n"]


OK_REPLY = {"id": "chatcmpl-ok", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


class DeadlineUpstream:
    """Serves /<scenario>/... for both providers; the scenario is the first path segment."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._server = LoopbackServer()
        self.url = ""

    def start(self) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{scenario}/{tail:.*}", self._handle)
        self.url = self._server.serve(app)
        return self.url

    def stop(self) -> None:
        self._server.stop()

    def count(self, scenario: str) -> int:
        return self.hits.count(scenario)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        body = await request.json()
        self.hits.append(scenario)
        anthropic = request.path.endswith("/messages")
        if scenario == "late":  # a non-stream reply that takes longer than the idle timeout to start
            await asyncio.sleep(2 * IDLE)
        if scenario in ("ok", "late") and not body.get("stream"):
            return web.json_response(OK_REPLY)
        json_body = scenario in ("trickle", "drip")
        response = web.StreamResponse(headers={"content-type": "application/json" if json_body else "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the gateway gave up on this reply: what these scenarios test
            await self._play(scenario, anthropic, request, response)
        return response

    async def _play(self, scenario: str, anthropic: bool, request: web.Request, response: web.StreamResponse) -> None:
        async def write(*frames: bytes, pause: float = 0.0) -> None:
            for frame in frames:
                await response.write(frame)
            if pause:
                await asyncio.sleep(pause)

        def gone() -> bool:
            return request.transport is None or request.transport.is_closing()

        if scenario == "ok":
            await write(*first_frames(anthropic, "fine"), *last_frames(anthropic))
        elif scenario == "ping":  # keep-alives forever, never content
            while not gone():
                await write(ANTHROPIC_PING if anthropic else OPENAI_PING, pause=0.2)
        elif scenario == "trickle":  # a JSON body, one space every 0.2 s, forever
            while not gone():
                await write(b" ", pause=0.2)
        elif scenario == "drip":  # a real JSON reply, one byte every 0.2 s: content, but slow
            for byte in json.dumps(OK_REPLY).encode():
                if gone():
                    break
                await write(bytes([byte]), pause=0.2)
        elif scenario == "stall":  # one delta, then pings (Anthropic) or silence (OpenAI)
            await write(*first_frames(anthropic, "partial"))
            for _ in range(300):
                if gone():
                    break
                await write(*([ANTHROPIC_PING] if anthropic else []), pause=0.2)
        else:  # steady (content every 0.2 s, 6 s in all) or slow (every 0.7 s, 2.8 s in all)
            pause, n = (0.2, 30) if scenario == "steady" else (0.7, 4)
            await write(*first_frames(anthropic, "t0 "), pause=pause)
            for i in range(1, n):
                await write(delta(anthropic, f"t{i} "), pause=pause)
            await write(*last_frames(anthropic))
        await response.write_eof()


@pytest.fixture(scope="module")
def fake() -> Iterator[DeadlineUpstream]:
    server = DeadlineUpstream()
    server.start()
    yield server
    server.stop()


def deployment(provider: str, model: str, fake: DeadlineUpstream, scenario: str, **extra: Any) -> dict[str, Any]:
    base = f"{fake.url}/{scenario}" + ("/v1" if provider == "openai" else "")
    return {"provider": provider, "model": model, "api_base": base, **extra}


def aliases(fake: DeadlineUpstream) -> dict[str, Any]:
    once = {"retry": "false", "fallback": "false"}
    return {
        "ping-claude": {**once, "candidates": [deployment("anthropic", "claude-sonnet-4-20250514", fake, "ping")]},
        "ping-then-ok": {
            "retry": 'error.kind == "timeout" && attempt <= 1', "fallback": 'error.kind == "timeout"',
            "candidates": [deployment("anthropic", "claude-opus-4-20250514", fake, "ping"),
                           deployment("openai", "gpt-4o", fake, "ok")],
        },
        "ping-gpt": {**once, "candidates": [deployment("openai", "o1", fake, "ping")]},
        "trickle": {**once, "candidates": [deployment("openai", "gpt-4-turbo", fake, "trickle")]},
        "late": {**once, "candidates": [deployment("openai", "gpt-4o", fake, "late")]},
        "drip": {**once, "candidates": [deployment("openai", "gpt-4-turbo", fake, "drip")]},
        "trickle-then-ok": {
            "retry": "false", "fallback": 'error.kind == "timeout"',
            "candidates": [deployment("openai", "o3-mini", fake, "trickle"), deployment("openai", "gpt-4o", fake, "ok")],
        },
        "stall-gpt": {**once, "candidates": [deployment("openai", "gpt-4o", fake, "stall")]},
        "stall-claude": {**once, "candidates": [deployment("anthropic", "claude-3-5-haiku-20241022", fake, "stall")]},
        "steady": {**once, "candidates": [deployment("openai", "gpt-4o", fake, "steady")]},
        "slow": {**once, "candidates": [deployment("anthropic", "claude-sonnet-4-20250514", fake, "slow")]},
        "slow-patient": {**once, "candidates": [
            deployment("anthropic", "claude-sonnet-4-20250514", fake, "slow", total_timeout=20, idle_timeout=5)]},
        # Would retry 20 times, then fall back; the request's deadline (3 s) allows two attempts of 1.5 s.
        "stubborn": {"retry": "attempt <= 20", "fallback": "true", "backoff": {"initial": 0.01, "jitter": 0},
                     "candidates": [deployment("openai", "gpt-4-turbo", fake, "drip"),
                                    deployment("openai", "gpt-4o", fake, "ok")]},
        # Its backoff (60 s) is longer than what is left of the deadline: no sleep starts.
        "patient-backoff": {"retry": "attempt <= 3", "fallback": "false", "backoff": {"initial": 60, "max": 60, "jitter": 0},
                            "candidates": [deployment("anthropic", "claude-3-5-haiku-20241022", fake, "ping")]},
    }


@pytest.fixture(scope="module")
def gateway(fake: DeadlineUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("deadlines")
    tree = spec_tree(tmp, breaker={"failures": 1000, "cooldown": 30})
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"] = aliases(fake)
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    env = {
        "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", **provider_env(fake.url),
        "GAUD_UPSTREAM_IDLE_TIMEOUT": str(IDLE), "GAUD_UPSTREAM_TOTAL_TIMEOUT": str(TOTAL),
        "GAUD_UPSTREAM_REQUEST_DEADLINE": str(REQUEST),
    }
    running = start_gateway(env, tmp / "gateway.log")
    yield running
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30)


def timed_stream(client: openai.OpenAI, model: str) -> tuple[str, BaseException | None, float]:
    """The text a stream delivered, the error that ended it (None: it completed), and its time."""
    started, text, error = time.monotonic(), [], None
    try:
        for chunk in client.chat.completions.create(model=model, messages=HELLO, stream=True):  # type: ignore[arg-type]
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    except openai.APIError as exc:
        error = exc
    return "".join(text), error, time.monotonic() - started


def assert_timeout_status(error: BaseException | None, words: str) -> None:
    """A 504 before the stream started: OpenAI-style JSON with the timeout kind."""
    assert isinstance(error, openai.APIStatusError), error
    assert error.status_code == 504
    body = error.body
    assert isinstance(body, dict) and body["type"] == "timeout_error" and body["code"] == "upstream_timeout", body
    assert words in body["message"], body


def assert_timeout_event(error: BaseException | None, words: str) -> None:
    """An error event after the stream started (the SDK raises it as an APIError)."""
    assert isinstance(error, openai.APIError) and not isinstance(error, openai.APIStatusError), error
    body = error.body
    assert isinstance(body, dict) and body["type"] == "timeout_error" and body["code"] == "upstream_timeout", body
    assert words in body["message"], body


# -- a stream that never has content -------------------------------------------------------------------
def test_a_stream_of_pings_ends_at_the_idle_timeout_before_the_first_byte(client, fake):
    text, error, took = timed_stream(client, "ping-claude")
    assert text == "" and took < BOUND
    assert_timeout_status(error, f"no content for {IDLE:g} s (idle timeout)")


def test_pings_are_retried_then_fall_back_to_a_healthy_deployment(client, fake):
    before = fake.count("ping"), fake.count("ok")
    text, error, took = timed_stream(client, "ping-then-ok")
    assert error is None and text == "fine" and took < BOUND
    assert (fake.count("ping") - before[0], fake.count("ok") - before[1]) == (2, 1)  # 2 attempts, then fallback


def test_passthrough_comments_are_not_a_first_byte(client, fake):
    # A pass-through stream forwards frames as they come; comments before the first frame are not
    # forwarded, so the stream has not started and the timeout is an error status (retriable).
    text, error, took = timed_stream(client, "ping-gpt")
    assert text == "" and took < BOUND
    assert_timeout_status(error, "idle timeout")


# -- a JSON body one space at a time ---------------------------------------------------------------
@pytest.mark.parametrize(("model", "words"), [
    ("trickle", f"no content for {IDLE:g} s (idle timeout)"),  # whitespace is no content
    ("drip", f"did not finish within {TOTAL:g} s (total timeout)"),  # content, too slow in all
])
def test_a_trickled_json_body_ends_at_its_deadline(client, fake, model, words):
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=HELLO)  # type: ignore[arg-type]
    assert time.monotonic() - started < BOUND
    assert_timeout_status(caught.value, words)


def test_the_idle_timeout_starts_when_the_upstream_answers(client, fake):
    # Before its headers an upstream is generating (a non-stream reply may take minutes to start);
    # the read timeout bounds that silence, not the idle timeout.
    reply = client.chat.completions.create(model="late", messages=HELLO)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "fine"


def test_a_trickled_json_body_falls_back(client, fake):
    reply = client.chat.completions.create(model="trickle-then-ok", messages=HELLO)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "fine"


# -- streams that stall or run long after the first byte -------------------------------------------
@pytest.mark.parametrize("model", ["stall-gpt", "stall-claude"])
def test_a_stream_that_stalls_after_its_first_delta_ends_with_an_error_event(client, fake, model):
    text, error, took = timed_stream(client, model)
    assert text == "partial" and took < BOUND
    assert_timeout_event(error, f"no content for {IDLE:g} s (idle timeout)")


def test_steady_content_does_not_outlast_the_total_timeout(client, fake):
    text, error, took = timed_stream(client, "steady")
    assert took < BOUND
    assert text.startswith("t0 t1 ") and "t29" not in text  # content flowed (idle never hit), then the cut
    assert_timeout_event(error, f"did not finish within {TOTAL:g} s (total timeout)")


def test_a_deployment_s_own_timeouts_apply(client, fake):
    text, error, _ = timed_stream(client, "slow")  # 0.7 s between deltas: over the 0.5 s idle timeout
    assert text == "t0 "
    assert_timeout_event(error, "idle timeout")
    text, error, took = timed_stream(client, "slow-patient")  # idle 5 s, total 20 s: it completes
    assert error is None and text == "t0 t1 t2 t3 " and took < BOUND


# -- the request's deadline ------------------------------------------------------------------------------
def test_the_request_deadline_stops_retries_and_fallbacks(client, fake):
    before = fake.count("drip"), fake.count("ok")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="stubborn", messages=HELLO)  # type: ignore[arg-type]
    assert time.monotonic() - started < BOUND
    assert_timeout_status(caught.value, f"did not finish within its deadline of {REQUEST:g} s after 2 attempt(s)")
    assert fake.count("drip") - before[0] == 2  # not the 21 attempts the rule allows
    assert fake.count("ok") == before[1]  # nor the fallback, once the deadline had passed


def test_no_backoff_sleep_starts_that_would_end_past_the_deadline(client, fake):
    before = fake.count("ping")
    text, error, took = timed_stream(client, "patient-backoff")
    assert took < BOUND and text == ""
    assert fake.count("ping") - before == 1
    assert_timeout_status(error, "idle timeout")  # the attempt's own error, at once


# -- in-process: the breaker, the settings ----------------------------------------------------------------
def test_timeouts_count_towards_the_breaker(fake: DeadlineUpstream, tmp_path: Path) -> None:
    tree = spec_tree(tmp_path, breaker={"failures": 2, "cooldown": 600}, retry="false", fallback="false")
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"] = {"trickle": aliases(fake)["trickle"]}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    catalog = load_catalog(tree, environ=provider_env(fake.url))
    gateway = Gateway(catalog, Upstream(), deadlines=Deadlines(total=0.3, idle=0.3, request=5))

    async def three() -> list[GatewayError]:
        errors = []
        try:
            for _ in range(3):
                try:
                    await gateway.chat({"model": "trickle", "messages": HELLO})
                except GatewayError as error:
                    errors.append(error)
        finally:
            await gateway.upstream.close()
        return errors

    before = fake.count("trickle")
    errors = asyncio.run(asyncio.wait_for(three(), BOUND))
    assert [type(e) for e in errors] == [UpstreamTimeout, UpstreamTimeout, Overloaded]
    assert fake.count("trickle") - before == 2  # the open breaker kept the third from the upstream


def test_settings_are_checked() -> None:
    settings = {"upstream.total_timeout": 60, "upstream.idle_timeout": None, "upstream.request_deadline": 90.5}
    assert Deadlines.from_settings(settings.__getitem__) == Deadlines(total=60.0, idle=None, request=90.5)
    for bad in (0, -1, "soon", True):
        with pytest.raises(ValueError, match=r"upstream\.idle_timeout"):
            Deadlines.from_settings({**settings, "upstream.idle_timeout": bad}.__getitem__)


def test_the_defaults_agree_with_the_config_defaults() -> None:
    from engine.config import DEFAULTS

    assert Deadlines.from_settings(lambda name: DEFAULTS["upstream"][name.split(".")[1]]) == Deadlines()
