"""A reply is a success only when it is complete and well-formed (issue 19, item 2).

A stream must end with its spec's terminal event (`stream.ends_with`); one that ends cleanly
without it is `incomplete_stream`: retried or failed over while nothing reached the client, else
ended with an error event and no `[DONE]`, its usage estimated and marked. A non-stream reply
without the fields its spec requires (`response.required`) is `response_parsing`. Pass-through
streams check the frames they read for the minimal OpenAI chunk shape."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from engine.config import load_settings
from engine.errors import GatewayError
from engine.pipeline.gateway import Exchange, Gateway
from engine.pipeline.upstream import Upstream
from engine.spec.loader import load_catalog
from engine.streaming import StreamState
from engine.streaming.events import compile_stream
from engine.streaming.passthrough import Passthrough, openai_chunk
from engine.web.server import create_app

from .conftest import ROOT, checked_catalog, one_target, provider_env
from .fakes import PROVIDERS, sse_frames
from .streams import assembled

HELLO = [{"role": "user", "content": "Hello"}]
SONNET, GPT = "anthropic/claude-sonnet-4-20250514", "openai/gpt-4o"


def frames(provider: str, name: str) -> list[bytes]:
    return sse_frames((PROVIDERS / provider / "replies" / name).read_bytes())


#: Anthropic's text stream: message_start, content_block_start, ping, 4 deltas, stop, message_delta, message_stop.
CLAUDE = frames("anthropic", "stream_text.sse")
CLAUDE_TWO_DELTAS = CLAUDE[:5]  # ... then a clean end: no message_delta, no message_stop
CLAUDE_NOTHING_SENT = CLAUDE[:3]  # message_start, content_block_start, ping: nothing for the client yet
#: OpenAI's: role chunk, text chunks, finish chunk, [DONE].
GPT_FRAMES = frames("openai", "stream_text.sse")


def _chunk(choices: Any, **extra: Any) -> bytes:
    body = {"id": "chatcmpl-c", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o", "choices": choices, **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _text(content: str) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": content}, "finish_reason": None}


ROUTES = {
    "aliases": {
        # The shipped defaults: incomplete_stream is retried; both kinds fall back.
        "claude-then-gpt": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                                           {"provider": "openai", "model": "gpt-4o"}]},
        "gpt-then-claude": {"candidates": [{"provider": "openai", "model": "gpt-4o"},
                                           {"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
        "claude-no-retry": {"retry": "false",
                            "candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                                           {"provider": "openai", "model": "gpt-4o"}]},
    },
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    import shutil

    for folder in ("providers.d", "pricing.d", "models.d", "ingress.d"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text())
    routes["aliases"].update(ROUTES["aliases"])  # the shipped ones (gpt-4o, ...) and these
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes))
    return tmp_path


class Run:
    """One in-process gateway (no sleeping in backoff); `stream`/`chat` return (result or error, body)."""

    def __init__(self, tree: Path, upstream_url: str) -> None:
        catalog = load_catalog(tree, environ=provider_env(upstream_url))
        catalog.raise_for_problems()
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.gateway = Gateway(catalog, Upstream(), sleep=sleep, rng=random.Random(7))
        self.exchange = Exchange()

    def __call__(self, body: dict[str, Any]) -> tuple[Any, bytes | None]:
        async def go() -> tuple[Any, bytes | None]:
            try:
                if body.get("stream"):
                    result = await self.gateway.chat_stream(body, self.exchange)
                    return result, b"".join([piece async for piece in result.body])
                return await self.gateway.chat(body, self.exchange), None
            finally:
                await self.gateway.upstream.close()

        try:
            return asyncio.run(go())
        except GatewayError as error:
            return error, None

    def failures(self, deployment: str) -> int:
        return int(self.gateway.router.breakers[deployment].consecutive_failures)


@pytest.fixture
def run(tree: Path, upstream) -> Run:  # type: ignore[no-untyped-def]
    return Run(tree, upstream.url)


def data_lines(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def objects(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data_lines(body) if line != "[DONE]"]


# -- streams cut short -------------------------------------------------------------------------------
def test_a_stream_cut_before_any_byte_is_retried(run, upstream):
    upstream.reply(frames=CLAUDE_NOTHING_SENT, content_type="text/event-stream")
    upstream.reply(frames=CLAUDE, content_type="text/event-stream")
    result, body = run({"model": "claude-then-gpt", "messages": HELLO, "stream": True})
    assert result.headers["x-gaud-deployment"] == SONNET and result.headers["x-gaud-attempts"] == "2"
    assert assembled(objects(body))["content"] == "Kelp forests grow fastest in cold, nutrient-rich water."
    assert data_lines(body)[-1] == "[DONE]"
    assert len(run.sleeps) == 1  # one backoff: the cut stream was retried like a 5xx


def test_a_stream_cut_before_any_byte_falls_back(run, upstream):
    upstream.reply(frames=CLAUDE_NOTHING_SENT, content_type="text/event-stream")
    upstream.reply(frames=GPT_FRAMES, content_type="text/event-stream")
    result, body = run({"model": "claude-no-retry", "messages": HELLO, "stream": True})
    assert result.headers["x-gaud-deployment"] == GPT
    assert data_lines(body)[-1] == "[DONE]"
    assert run.exchange.tried == [SONNET, GPT]
    assert run.failures(SONNET) == 1  # counted against its breaker


@pytest.mark.parametrize(("cut", "alias", "deployment"), [
    (CLAUDE_TWO_DELTAS, "claude-then-gpt", SONNET),  # translated
    (GPT_FRAMES[:3], "gpt-then-claude", GPT),  # pass-through: role chunk, two text chunks
    (GPT_FRAMES[:-1], "gpt-then-claude", GPT),  # pass-through: everything but [DONE]
], ids=["anthropic", "passthrough", "passthrough-finished-without-done"])
def test_a_stream_cut_after_bytes_ends_with_an_error_event_and_no_done(run, upstream, cut, alias, deployment):
    upstream.reply(frames=cut, content_type="text/event-stream")
    _, body = run({"model": alias, "messages": HELLO, "stream": True,
                        "stream_options": {"include_usage": True}})
    lines = data_lines(body)
    assert "[DONE]" not in lines
    *chunks, last = objects(body)
    assert last == {"error": {"message": last["error"]["message"], "type": "upstream_error", "param": None,
                              "code": "incomplete_stream"}}
    assert "before its end event" in last["error"]["message"]
    assert assembled(chunks)["content"]  # what was generated still reached the client
    assert not any(c.get("usage") for c in chunks)  # no closing usage chunk: the stream did not close
    assert len(upstream.requests) == 1  # never retried once bytes were sent
    exchange = run.exchange
    assert exchange.error is not None and exchange.error.kind == "incomplete_stream"
    assert exchange.usage is not None and exchange.usage["estimated"] is True
    assert exchange.cost > 0 and run.failures(deployment) == 1


def test_a_cut_stream_bills_its_output_as_estimated_not_as_the_first_count(run, upstream):
    """Anthropic's message_start says output_tokens 1; two deltas later the stream ends: the
    estimate from the text sent wins, and it is marked."""
    upstream.reply(frames=CLAUDE_TWO_DELTAS, content_type="text/event-stream")
    run({"model": "claude-then-gpt", "messages": HELLO, "stream": True})
    usage = run.exchange.usage
    assert usage["prompt_tokens"] == 14  # reported in message_start
    assert usage["completion_tokens"] == 5  # "Kelp forests grow": 17 characters, ~4 a token
    assert usage["estimated"] is True


def test_the_stream_only_path_retries_a_cut_stream_too(run, upstream):
    """A non-stream request served from a stream (`endpoints.chat.stream_only`) reads it through
    the same checks; here through a spec that says so."""
    spec = run.gateway.catalog.providers["anthropic"]
    spec.endpoints["chat"].stream_only = True
    try:
        upstream.reply(frames=CLAUDE_TWO_DELTAS, content_type="text/event-stream")
        upstream.reply(frames=CLAUDE, content_type="text/event-stream")
        result, _ = run({"model": "claude-then-gpt", "messages": HELLO})
    finally:
        spec.endpoints["chat"].stream_only = False
    assert result.completion["choices"][0]["message"]["content"].startswith("Kelp forests")
    assert result.headers["x-gaud-attempts"] == "2"


@pytest.mark.parametrize(("provider", "fixture", "model"), [
    ("anthropic", "stream_text.sse", "claude-sonnet-4"),
    ("openai", "stream_text.sse", "gpt-4o"),
    ("gemini", "stream_text.sse", "gemini-2.5-flash"),  # no end event: ends_with finish
    ("gemini", "stream_safety.sse", "gemini-2.5-flash"),
])
def test_complete_streams_still_pass(run, upstream, provider, fixture, model):
    upstream.reply_fixture(provider, fixture)
    result, body = run({"model": model, "messages": HELLO, "stream": True})
    assert not isinstance(result, GatewayError), result
    assert data_lines(body)[-1] == "[DONE]" and run.exchange.error is None
    assert "error" not in objects(body)[-1]


def test_a_gemini_stream_without_its_finish_reason_is_cut(run, upstream):
    upstream.reply(frames=frames("gemini", "stream_text.sse")[:-1], content_type="text/event-stream")
    _, body = run({"model": "gemini-2.5-flash", "messages": HELLO, "stream": True})
    assert objects(body)[-1]["error"]["code"] == "incomplete_stream"


# -- replies of the wrong shape ------------------------------------------------------------------------
@pytest.mark.parametrize("reply", [
    {"choices": {"a": 1}, "usage": 7},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    {"choices": [{"message": "hi", "finish_reason": "stop"}]},
    {"id": "x", "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": 7},
    {"error": None},
], ids=["choices-object", "no-choice", "message-string", "usage-number", "empty"])
def test_a_wrong_shaped_reply_is_response_parsing_and_counts_against_the_breaker(run, upstream, reply):
    upstream.reply(json=reply)
    error, _ = run({"model": "gpt-4o", "messages": HELLO})
    assert (error.kind, error.status, error.to_openai()["error"]["code"]) == ("response_parsing", 502, "response_parsing")
    assert "wrong shape" in error.message
    assert run.failures(GPT) == 1


def test_a_wrong_shaped_reply_falls_back(run, upstream):
    upstream.reply(json={"choices": {"a": 1}, "usage": 7})
    upstream.reply_fixture("anthropic", "messages_text.json")
    result, _ = run({"model": "gpt-then-claude", "messages": HELLO})
    assert result.headers["x-gaud-deployment"] == SONNET
    assert result.completion["choices"][0]["message"]["content"]


def test_an_anthropic_reply_without_content_is_response_parsing(run, upstream):
    reply = json.loads((PROVIDERS / "anthropic" / "replies" / "messages_text.json").read_text())
    del reply["content"]
    upstream.reply(json=reply)
    error, _ = run({"model": "claude-no-retry", "messages": HELLO})
    # Fell back to openai, which had nothing queued: the anthropic failure is listed.
    failures = {f["deployment"]: f["kind"] for f in error.failures} if error.failures else {SONNET: error.kind}
    assert failures[SONNET] == "response_parsing"
    assert run.failures(SONNET) == 1


@pytest.mark.parametrize(("provider", "fixture", "model"), [
    ("anthropic", "messages_empty_content.json", "claude-sonnet-4"),
    ("gemini", "generate_prompt_blocked.json", "gemini-2.5-flash"),  # no candidates: the refusal is the reply
    ("openai", "chat_completion_text.json", "gpt-4o"),
])
def test_well_formed_replies_with_little_in_them_still_pass(run, upstream, provider, fixture, model):
    upstream.reply_fixture(provider, fixture)
    result, _ = run({"model": model, "messages": HELLO})
    assert not isinstance(result, GatewayError), result


# -- pass-through frames ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openai_spec():  # type: ignore[no-untyped-def]
    return one_target(checked_catalog({"OPENAI_API_KEY": "sk-test"}), "openai/gpt-4o").provider


def test_the_minimal_chunk_shape() -> None:
    assert openai_chunk({"choices": []}) and openai_chunk({"id": "c", "choices": [{"delta": {}}]})
    for bad in ([], "x", {}, {"choices": 5}, {"choices": {"0": {}}}, {"choices": [5]}):
        assert not openai_chunk(bad), bad


def test_a_malformed_first_frame_fails_before_any_byte_and_falls_back(run, upstream):
    upstream.reply(frames=[_chunk({"0": _text("Hi")}), *GPT_FRAMES[1:]], content_type="text/event-stream")
    upstream.reply(frames=CLAUDE, content_type="text/event-stream")
    result, body = run({"model": "gpt-then-claude", "messages": HELLO, "stream": True})
    assert result.headers["x-gaud-deployment"] == SONNET
    assert data_lines(body)[-1] == "[DONE]" and b'"choices":{' not in body


@pytest.mark.parametrize("last", [
    b'data: {"id":"chatcmpl-c","choices":[{"index":0,"delta":{"content":" half a fr',  # the body ends inside a frame
    _chunk({"0": {"index": 0, "delta": {}, "finish_reason": "stop"}}) + b"data: [DONE]\n\n",  # a marked frame, wrong shape
    _chunk(None, usage={"prompt_tokens": 1}) + b"data: [DONE]\n\n",  # read for its usage
], ids=["cut-inside-the-last-frame", "finish-frame-of-the-wrong-shape", "usage-frame-of-the-wrong-shape"])
def test_a_malformed_last_frame_is_not_forwarded(run, upstream, last):
    head = [_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
            _chunk([_text("Hello")]), _chunk([_text(" there")])]
    upstream.reply(frames=[*head, last], content_type="text/event-stream")
    _, body = run({"model": "gpt-4o", "messages": HELLO, "stream": True})
    lines = data_lines(body)
    assert "[DONE]" not in lines
    assert lines[:-1] == [frame.decode()[6:].strip() for frame in head]  # forwarded as they came, and nothing else
    error = json.loads(lines[-1])["error"]
    assert error["code"] in ("response_parsing", "incomplete_stream")
    assert run.exchange.error is not None and run.failures(GPT) == 1


def test_frames_forwarded_unread_are_not_parsed(openai_spec):
    """Cheap by design: a text frame after the first is forwarded as is, whatever it holds."""
    state = StreamState()
    reader = openai_spec.stream.reader(state)
    assert isinstance(reader, Passthrough)
    first = _chunk([_text("Hello")])
    odd = b'data: {"choices":7,"text":"x"}\n\n'
    assert reader.feed(first + odd) == first + odd


# -- the spec's word ---------------------------------------------------------------------------------------
def test_ends_with_defaults_from_the_done_handling_the_spec_declares(openai_spec):
    assert compile_stream({"done_data": "[DONE]", "events": {"_default": ["ignore"]}}).ends_with == "done"
    assert compile_stream({"events": {"stop": ["done"], "_default": ["ignore"]}}).ends_with == "done"
    nested = {"_default": [{"switch": {"by": "/t", "cases": {"x": [{"finish": "/f"}]}}}]}
    assert compile_stream({"events": nested}).ends_with == "finish"
    assert compile_stream({"events": {"_default": [{"text": "/t"}]}}).ends_with == "eof"
    assert compile_stream({"events": {"finish": ["ignore"]}}).ends_with == "eof"  # an event *named* finish
    catalog = checked_catalog(provider_env("http://127.0.0.1:9"))
    shipped = {name: spec.stream.ends_with for name, spec in catalog.providers.items() if spec.stream is not None}
    assert shipped["openai"] == shipped["cohere"] == "done"
    assert shipped["anthropic"] == "finish_and_done"  # message_delta's stop_reason, then message_stop
    assert shipped["gemini"] == shipped["ollama"] == "finish"
    assert "eof" not in shipped.values()


@pytest.mark.parametrize(("section", "message"), [
    ({"ends_with": "done", "events": {"_default": [{"finish": "/f"}]}}, "needs `done_data` or a `done` action"),
    ({"ends_with": "finish", "done_data": "[DONE]", "events": {"_default": ["ignore"]}}, "needs a `finish` action"),
    ({"ends_with": "finish_and_done", "done_data": "[DONE]", "events": {"_default": ["ignore"]}}, "needs a `finish` action"),
])
def test_an_ends_with_the_table_cannot_see_is_refused(section, message):
    with pytest.raises(ValueError, match=message):
        compile_stream(section)


def test_finish_and_done_needs_both_a_finish_reason_and_the_end_event():
    section = compile_stream({"ends_with": "finish_and_done", "key": "event", "events": {
        "stop": ["done"], "delta": [{"finish": "/stop_reason"}], "_default": ["ignore"]}})
    for frames, whole in ((["stop"], False), (["delta"], False), (["delta", "stop"], True)):
        state = StreamState()
        for event in frames:
            section.handle(event, '{"stop_reason": "end_turn"}', state)
        assert section.complete(state) is whole, frames


# -- end to end: the official SDK, the audit row -------------------------------------------------------------
def test_the_openai_sdk_sees_a_cut_stream_fail_and_the_audit_row_says_so(tree, upstream, tmp_path):
    db = tmp_path / "audit.db"
    settings = load_settings(environ={"GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{db}",
                                      "GAUD_SPECS_DIR": str(tree)})
    catalog = load_catalog(tree, environ=provider_env(upstream.url))
    app = create_app(catalog, settings)
    upstream.reply(frames=CLAUDE_TWO_DELTAS, content_type="text/event-stream")
    upstream.reply(json={"choices": {"a": 1}, "usage": 7})

    async def go() -> tuple[str, openai.APIError, openai.APIStatusError]:
        starlette = app.app
        async with starlette.router.lifespan_context(starlette):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
            client = openai.AsyncOpenAI(base_url="http://gaud/v1", api_key="unused", max_retries=0, http_client=http)
            text = ""
            with pytest.raises(openai.APIError) as streamed:
                stream = await client.chat.completions.create(model="claude-sonnet-4", messages=HELLO, stream=True)
                async for chunk in stream:
                    text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            with pytest.raises(openai.APIStatusError) as plain:
                await client.chat.completions.create(model="gpt-4o", messages=HELLO)
            await http.aclose()
        return text, streamed.value, plain.value

    text, streamed, plain = asyncio.run(go())
    assert text == "Kelp forests grow"
    assert streamed.code == "incomplete_stream"
    assert (plain.status_code, plain.code) == (502, "response_parsing")
    from engine.accounts.store import Store

    store = Store(f"sqlite:///{db}")
    try:
        rows = store.audit_records()
    finally:
        store.close()
    assert [(r["deployment"], r["status"], r["error_kind"], r["stream"]) for r in rows] == [
        (SONNET, 200, "incomplete_stream", True),  # the client saw a 200 and then the error event
        (GPT, 502, "response_parsing", False),
    ]
    assert rows[0]["prompt_tokens"] == 14 and rows[0]["completion_tokens"] == 5 and rows[0]["cost"] > 0
    assert [r["usage_estimated"] for r in rows] == [True, False]  # the cut stream's output is an estimate


def test_an_anthropic_client_gets_its_own_error_event(gateway, upstream):
    """The Messages ingress: the same cut stream ends with `event: error`, no message_stop."""
    upstream.reply(frames=CLAUDE_TWO_DELTAS, content_type="text/event-stream")
    with httpx.stream("POST", f"{gateway.url}/v1/messages", timeout=20,
                      json={"model": "claude-sonnet-4", "max_tokens": 64, "messages": HELLO, "stream": True}) as response:
        text = response.read().decode()
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "error" and "message_stop" not in events and "content_block_delta" in events
    error = json.loads([line for line in text.splitlines() if line.startswith("data: ")][-1][6:])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "ended the stream before its end event" in error["error"]["message"]
