"""Same-format pass-through (docs/ingress.md): a /v1/messages client in front of an Anthropic
deployment gets every native feature, end to end with the official `anthropic` SDK against a
served gateway and a fake Anthropic upstream; a deployment of another format gets the request
translated, or is skipped (a 400 when none is left) when the request holds what it cannot express."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pydantic
import pytest
import yaml

from engine.accounts.store import Store
from engine.spec.loader import load_catalog
from engine.spec.wire import compile_passthrough
from engine.streaming import StreamState
from engine.streaming.deltas import StreamFailure
from engine.streaming.native import NativeRelay

from .conftest import ROOT, RunningGateway, provider_env, spec_tree, start_gateway
from .fakes import sse_frames

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()
UPSTREAM_MODEL = "claude-sonnet-4-20250514"
REPLIES = ROOT / "tests" / "providers" / "anthropic" / "replies"
# Per million tokens: input 3, output 15, cache read 0.3, cache write 3.75 (pricing.d/anthropic.yaml).
PRICE = {"input": 3, "output": 15, "cached": 0.3, "write": 3.75}

NATIVE_REPLY = {
    "id": "msg_native_0001", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL,
    "content": [
        {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "tides Brest"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": [
            {"type": "web_search_result", "url": "https://tides.example/brest", "title": "Brest tides",
             "encrypted_content": "EncA", "page_age": None}]},
        {"type": "text", "text": "High tide is at 06:12.", "citations": [
            {"type": "web_search_result_location", "url": "https://tides.example/brest", "title": "Brest tides",
             "encrypted_index": "EncI", "cited_text": "High water 06:12"}]},
    ],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 100, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3000,
              "output_tokens": 50, "server_tool_use": {"web_search_requests": 1}},
}


def _cost(input_tokens: int, output: int, cached: int = 0, written: int = 0) -> float:
    return (input_tokens * PRICE["input"] + output * PRICE["output"] + cached * PRICE["cached"]
            + written * PRICE["write"]) / 1e6


@pytest.fixture(scope="module")
def served(fake_upstream_server, tmp_path_factory) -> Iterator[tuple[RunningGateway, Path]]:
    """A gateway with an alias whose first candidate speaks the Messages format and whose second
    does not (fallbacks on, retries off)."""
    tmp = tmp_path_factory.mktemp("passthrough")
    tree = spec_tree(tmp, retry="false")
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"]["claude-or-gpt"] = {"candidates": [
        {"provider": "anthropic", "model": UPSTREAM_MODEL}, {"provider": "openai", "model": "gpt-4o"}]}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    env = {"GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", **provider_env(fake_upstream_server.url),
           "GAUD_DATABASE_URL": f"sqlite:///{tmp / 'gaud.db'}"}
    running = start_gateway(env, tmp / "gateway.log")
    yield running, tmp / "gaud.db"
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture
def sdk(served):  # type: ignore[no-untyped-def]
    return anthropic.Anthropic(base_url=served[0].url, api_key="unused", max_retries=0, timeout=20)


def _audit(db: Path, request_id: str, timeout: float = 10.0) -> dict:
    """The audit row of one request, once the gateway has written it (in batches, off the hot path)."""
    store = Store(f"sqlite:///{db}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = [r for r in store.audit_records() if r["request_id"] == request_id]
            if rows:
                return rows[0]
            time.sleep(0.05)  # polling a database the gateway writes to, not waiting for readiness
    finally:
        store.close()
    raise AssertionError(f"no audit row for {request_id}")


def _rid() -> dict[str, str]:
    return {"x-request-id": f"pt-{uuid.uuid4().hex[:16]}"}


def _native_request(model: str = "claude-sonnet-4") -> dict:
    """Every native feature the translated path loses, in one request."""
    return {
        "model": model,
        "max_tokens": 16000,
        "system": [{"type": "text", "text": "You answer with sources.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                 "title": "Tide tables", "citations": {"enabled": True}},
                {"type": "text", "text": "When is high tide at Brest? Check the screenshot too."}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "screenshot", "input": {"url": "https://tides.example"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": [
                    {"type": "text", "text": "Screenshot:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]},
        ],
        "tools": [
            {"name": "screenshot", "description": "Screenshot of a page",
             "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 10000},
    }


# -- the same format: as it is ----------------------------------------------------------------
def test_native_features_reach_anthropic_unchanged_and_are_billed_from_native_usage(sdk, served, upstream):
    db = served[1]
    upstream.reply(json=NATIVE_REPLY)
    request, rid = _native_request(), _rid()
    raw = sdk.messages.with_raw_response.create(
        **request, extra_headers={**rid, "anthropic-beta": "web-search-2025-03-05"})
    reply = raw.parse()

    sent = upstream.last()
    assert sent.path == "/v1/messages"
    assert sent.body == {**request, "model": UPSTREAM_MODEL}  # only the model id rewritten
    assert sent.headers["x-api-key"] == "sk-ant-test-secret-0001"  # the deployment's key, not the client's
    assert sent.headers["anthropic-beta"] == "web-search-2025-03-05"  # forwarded (ingress `forward_headers`)
    assert sent.body["thinking"]["budget_tokens"] == 10000

    assert [b.type for b in reply.content] == ["server_tool_use", "web_search_tool_result", "text"]
    assert reply.content[2].citations[0].cited_text == "High water 06:12"
    assert reply.usage.server_tool_use.web_search_requests == 1
    assert raw.http_response.json() == NATIVE_REPLY  # byte for byte what the upstream said

    cost = _cost(100, 50, cached=3000, written=200)
    assert float(raw.headers["x-gaud-cost"]) == pytest.approx(cost)
    assert raw.headers["x-gaud-deployment"] == f"anthropic/{UPSTREAM_MODEL}"
    row = _audit(db, rid["x-request-id"])
    assert (row["status"], row["deployment"]) == (200, f"anthropic/{UPSTREAM_MODEL}")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (3300, 50, 3000)
    assert row["cost"] == pytest.approx(cost) and not row["usage_estimated"]


class Tide(pydantic.BaseModel):
    harbour: str
    high_water: str


def test_structured_output_and_adaptive_thinking_with_messages_parse(sdk, upstream):
    answer = {"harbour": "Brest", "high_water": "06:12"}
    upstream.reply(json={
        "id": "msg_parse_01", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL,
        "content": [{"type": "thinking", "thinking": "Look it up.", "signature": "SIG"},
                    {"type": "text", "text": json.dumps(answer)}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 12}})
    parsed = sdk.messages.parse(model="claude-sonnet-4", max_tokens=2000, output_format=Tide,
                                thinking={"type": "adaptive"},
                                messages=[{"role": "user", "content": "High water at Brest?"}])
    assert parsed.parsed_output == Tide(**answer)
    sent = upstream.last().body
    assert sent["thinking"] == {"type": "adaptive"}
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert set(sent["output_config"]["format"]["schema"]["properties"]) == {"harbour", "high_water"}
    assert "tools" not in sent and "tool_choice" not in sent  # not rewritten into a forced tool


def test_stream_is_relayed_frame_for_frame_and_billed_from_its_usage_events(served, upstream):
    gateway, db = served
    fixture = (REPLIES / "stream_cache_usage.sse").read_bytes()
    # Frames split mid-line across upstream writes: the client still gets whole frames, all of them.
    pieces = [piece for frame in sse_frames(fixture) for piece in (frame[:9], frame[9:])]
    upstream.reply(frames=pieces, content_type="text/event-stream")
    rid = _rid()
    body = {**_native_request(), "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, timeout=20,
                      headers={"x-api-key": "k", "anthropic-version": "2023-06-01", **rid}) as response:
        assert response.status_code == 200
        received = response.read()
    assert received.replace(b"\r\n", b"\n") == fixture.replace(b"\r\n", b"\n")
    assert upstream.last().body == {**body, "model": UPSTREAM_MODEL}
    row = _audit(db, rid["x-request-id"])
    assert (row["status"], row["stream"]) == (200, True)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (21 + 18000, 9, 18000)
    assert row["cost"] == pytest.approx(_cost(21, 9, cached=18000))


def test_stream_with_the_sdk_and_an_upstream_error_after_the_first_frame(sdk, served, upstream):
    upstream.reply_fixture("anthropic", "stream_text.sse")
    with sdk.messages.stream(**_native_request()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0 and final.stop_reason == "end_turn"

    upstream.reply_fixture("anthropic", "stream_error_overloaded.sse")
    with pytest.raises(anthropic.APIStatusError) as caught, sdk.messages.stream(**_native_request()) as stream:
        for _ in stream:
            pass
    assert "overloaded" in str(caught.value).lower()


# -- another format: translated, or skipped --------------------------------------------------
def test_fallback_to_another_format_translates(sdk, upstream):
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    upstream.reply_fixture("openai", "chat_completion_text.json")
    raw = sdk.messages.with_raw_response.create(
        model="claude-or-gpt", max_tokens=100, system="Be brief.",
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "Hello"}])
    reply = raw.parse()
    assert raw.headers["x-gaud-deployment"] == "openai/gpt-4o" and raw.headers["x-gaud-attempts"] == "2"
    first, second = upstream.requests
    assert first.path == "/v1/messages" and first.body["model"] == UPSTREAM_MODEL
    assert second.path == "/v1/chat/completions"
    assert second.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert second.body["model"] == "gpt-4o"
    assert reply.type == "message" and reply.content[0].type == "text"  # translated back


def test_fallback_skips_a_candidate_that_cannot_express_the_request(sdk, upstream):
    upstream.reply_fixture("anthropic", "error_529_overloaded.json")
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(**_native_request("claude-or-gpt"))
    assert len(upstream.requests) == 1  # the OpenAI deployment was not called
    message = caught.value.body["error"]["message"]
    # Citations have no translation; the document, the image in a tool_result and the server tool would.
    assert "openai/gpt-4o (skipped: openai/gpt-4o cannot take `messages` (citations)" in message


@pytest.mark.parametrize(("extra", "param", "what"), [
    ({"thinking": {"type": "adaptive"}}, "thinking", "type adaptive"),
    ({"messages": [{"role": "user", "content": [
        {"type": "search_result", "source": "https://tides.example", "title": "Tides",
         "content": [{"type": "text", "text": "High tide 14:02"}]}]}]}, "messages", "type search_result"),
    ({"top_k": 5}, "top_k", ""),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_native_only_feature_with_only_another_format_is_a_400(served, upstream, extra, param, what, stream):
    """What the translation has no part for. (Documents, images in a tool_result, server tools and
    output_config are translated, then mapped or refused by each spec's `request.params`:
    tests/test_nodrop.py.)"""
    body = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **extra}
    if stream:
        body["stream"] = True
    response = httpx.post(f"{served[0].url}/v1/messages", json=body, timeout=20,
                          headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"openai/gpt-4o cannot take `{param}`" + (f" ({what})" if what else ""))
    assert upstream.requests == []


def test_output_config_to_another_format_is_refused_by_its_params(served, upstream):
    body = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}
    response = httpx.post(f"{served[0].url}/v1/messages", json=body, timeout=20,
                          headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert response.status_code == 400 and upstream.requests == []
    assert response.json()["error"]["message"].startswith("openai/gpt-4o does not support 'output_config'")


# -- the declarations ---------------------------------------------------------------------------
def test_vertex_claude_moves_the_model_to_the_url_and_names_the_version_in_the_body():
    catalog = load_catalog(ROOT, environ={})
    wire = catalog.providers["vertex-anthropic"].wire_format
    assert wire is not None and wire.name == "messages"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [], "thinking": {"type": "adaptive"}}
    assert wire.rewrite(body, "claude-sonnet-4-5@20250929") == {
        "max_tokens": 10, "messages": [], "thinking": {"type": "adaptive"}, "anthropic_version": "vertex-2023-10-16"}
    assert catalog.providers["anthropic"].wire_format.rewrite(body, "m-1")["model"] == "m-1"
    assert catalog.providers["bedrock"].wire_format is None  # the Converse API is another format
    assert catalog.providers["openai"].wire_format is None


def test_reduce_leaves_the_client_request_untouched():
    spec = compile_passthrough({"formats": ["messages"], "native_only": [
        {"param": "messages", "at": "/messages/*/content/*", "when": {"eq": ["/type", "document"]}},
        {"param": "output_config", "at": "/output_config"}]})
    assert spec is not None
    body = {"output_config": {"x": 1}, "messages": [
        {"role": "user", "content": "plain"},
        {"role": "user", "content": [{"type": "document"}, {"type": "text", "text": "a"}]}]}
    before = json.dumps(body)
    reduced, lost = spec.reduce(body)
    assert json.dumps(body) == before
    assert reduced == {"messages": [{"role": "user", "content": "plain"},
                                    {"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    assert [str(x) for x in lost] == ["`messages` (type document)", "`output_config`"]
    clean = {"messages": [{"role": "user", "content": "x"}]}
    assert spec.reduce(clean) == (clean, []) and spec.reduce(clean)[0] is clean


def test_relay_forwards_whole_frames_and_fails_on_an_error_event():
    catalog = load_catalog(ROOT, environ={})
    stream = catalog.providers["anthropic"].stream
    fixture = (REPLIES / "stream_error_overloaded.sse").read_bytes()
    state = StreamState()
    relay = NativeRelay(stream, state)
    out = b""
    with pytest.raises(StreamFailure) as failure:
        for i in range(0, len(fixture), 7):
            out += relay.feed(fixture[i:i + 7])
    out += failure.value.partial  # type: ignore[operator]
    frames = [f for f in out.split(b"\n\n") if f]
    assert len(frames) == 3 and all(f.startswith(b"event: ") for f in frames)
    assert b"error" not in out  # the upstream's error frame is replaced by the gateway's own event
    assert state.raw_usage and relay.output_chars == len("Starting to")


def test_count_tokens_of_the_same_format_counts_the_request_as_sent(sdk, upstream):
    upstream.reply(json={"input_tokens": 2345})
    request = _native_request()
    del request["max_tokens"]
    raw = sdk.messages.with_raw_response.count_tokens(**request)
    assert raw.parse().input_tokens == 2345 and raw.headers["x-gaud-token-count"] == "provider"
    sent = upstream.last()
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body == {**request, "model": UPSTREAM_MODEL}  # the document and the server tool included


def test_a_request_with_native_only_parts_is_never_answered_from_the_cache(served, upstream):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", "x-gaud-cache": "on"}
    url = f"{served[0].url}/v1/messages"
    for pdf in ("A", "B"):  # the canonical requests are the same: only the documents differ
        upstream.reply(json=NATIVE_REPLY)
        body = _native_request()
        body["messages"][0]["content"][0]["source"]["data"] = base64.b64encode(pdf.encode()).decode()
        response = httpx.post(url, json=body, headers=headers, timeout=20)
        assert response.status_code == 200 and response.headers.get("x-gaud-cache") != "hit"
        assert upstream.last().body["messages"][0]["content"][0]["source"]["data"] == body["messages"][0][
            "content"][0]["source"]["data"]
    assert len(upstream.requests) == 2
    # One without such parts is cached as before (the canonical reply, mapped for the client on a hit).
    plain = {"model": "claude-sonnet-4", "max_tokens": 50, "messages": [{"role": "user", "content": "Cache me"}]}
    upstream.reply_fixture("anthropic", "messages_text.json")
    first = httpx.post(url, json=plain, headers=headers, timeout=20)
    again = httpx.post(url, json=plain, headers=headers, timeout=20)
    assert (first.headers["x-gaud-cache"], again.headers["x-gaud-cache"]) == ("miss", "hit")
    assert again.json()["content"][0]["text"] == first.json()["content"][0]["text"]
    assert len(upstream.requests) == 3


def test_a_passed_through_reply_of_the_wrong_shape_is_a_failure(sdk, upstream):
    upstream.reply(json={"id": "msg_x", "type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}})
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk.messages.create(**_native_request())
    assert caught.value.status_code == 502 and "wrong shape" in caught.value.body["error"]["message"]


def test_a_relayed_stream_cut_short_ends_with_an_error_event(served, upstream):
    frames = sse_frames((REPLIES / "stream_text.sse").read_bytes())
    upstream.reply(frames=frames[:-2], content_type="text/event-stream")  # no message_delta, no message_stop
    with httpx.stream("POST", f"{served[0].url}/v1/messages", json={**_native_request(), "stream": True},
                      headers={"x-api-key": "k"}, timeout=20) as response:
        received = response.read().decode()
    assert received.startswith("event: message_start")
    last = received.strip().split("\n\n")[-1]
    assert last.startswith("event: error") and "incomplete" in last
    assert "message_stop" not in received


def test_validate_reports_a_passthrough_format_no_provider_speaks(tmp_path):
    import shutil
    import subprocess
    import sys

    tree = tmp_path / "specs"
    for part in ("providers.d", "pricing.d", "models.d", "ingress.d"):
        shutil.copytree(ROOT / part, tree / part)
    shutil.copy(ROOT / "routes.yaml", tree / "routes.yaml")
    spec = tree / "ingress.d" / "anthropic-messages.yaml"
    spec.write_text(spec.read_text().replace("formats: [messages]", "formats: [messages, mesages]"))
    done = subprocess.run([sys.executable, "-m", "engine", "validate", str(tree)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode != 0
    assert "/passthrough/formats/1" in done.stdout + done.stderr
    assert "no provider spec speaks the wire format 'mesages'" in done.stdout + done.stderr
