"""Bad input over HTTP: each a 4xx OpenAI-style error, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import MAX_BODY_BYTES

HELLO = [{"role": "user", "content": "Hello"}]


def _assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_json"),
        (b'{"model": "gpt-4o"}', {"content-type": "application/json"}, 400, "missing_required_parameter"),
        (b'{"model": "gpt-4o", "messages": []}', {"content-type": "application/json"}, 400, "invalid_value"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', {"content-type": "application/json"}, 404, "model_not_found"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}', {"content-type": "application/json"}, 400, "invalid_value"),
        (b'{"model": "claude-sonnet-4", "messages": [{"role": "user", "content": 42}]}', {"content-type": "application/json"}, 400, "invalid_value"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', {"content-type": "application/json"}, 400, "invalid_value"),
    ],
)
def test_bad_requests(gateway, upstream, content, headers, status, code):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=content, headers=headers)
    _assert_openai_error(response, status, code)
    assert upstream.requests == []


def test_param_names_the_offending_field(gateway, upstream):
    body = {
        "model": "claude-sonnet-4",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
        ],
    }
    error = _assert_openai_error(httpx.post(f"{gateway.url}/v1/chat/completions", json=body), 400)
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}
    error = _assert_openai_error(httpx.post(f"{gateway.url}/v1/chat/completions", json=body), 400)
    assert error["param"] == "messages[0].content[0].image_url.url"


def test_body_over_the_limit(gateway, upstream):
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=big)
    _assert_openai_error(reply, 413, "request_too_large")
    assert reply.headers["connection"] == "close"  # the rest of the body is not read: the sender is stopped
    assert upstream.requests == []


def test_unknown_path_and_method(gateway):
    _assert_openai_error(httpx.get(f"{gateway.url}/v1/nothing"), 404)
    _assert_openai_error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_sdk_sees_typed_errors(client, upstream):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "tool", "content": "x"}])
    assert info.value.body["param"] == "messages[0].tool_call_id"


def test_upstream_garbage_is_a_502_not_a_500(gateway, upstream):
    upstream.reply(body=b"<html>oops</html>", content_type="text/html")
    _assert_openai_error(
        httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO}), 502, "response_parsing"
    )


def test_upstream_unreachable_is_a_connection_error(tmp_path):
    from .conftest import free_port, spec_tree, start_gateway

    dead = f"http://127.0.0.1:{free_port()}"
    tree = spec_tree(tmp_path, retry="false")
    running = start_gateway(
        {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": dead, "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false", "GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"}, tmp_path / "gw.log"
    )
    try:
        response = httpx.post(f"{running.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO})
        _assert_openai_error(response, 502, "connection")
        # The member sees no internal address; the log keeps it for the operator.
        port = dead.rpartition(":")[2]
        assert "127.0.0.1" not in response.text and port not in response.text
        assert f"127.0.0.1:{port}" in running.logs_with(f"127.0.0.1:{port}")
    finally:
        running.process.terminate()
        running.process.wait(10)


def test_secrets_never_in_logs(gateway, upstream):
    from .conftest import TEST_SECRETS

    upstream.reply(status=401, json={"error": {"type": "authentication_error", "message": f"invalid x-api-key {TEST_SECRETS['ANTHROPIC_API_KEY']}"}})
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "claude-sonnet-4", "messages": HELLO},
                          headers={"x-request-id": "trace-secrets-1"})
    error = _assert_openai_error(response, 401, "invalid_api_key")
    assert TEST_SECRETS["ANTHROPIC_API_KEY"] not in error["message"]
    assert "[redacted]" in error["message"]
    logs = gateway.logs_with("trace-secrets-1")  # this request's own line is in
    for secret in TEST_SECRETS.values():
        assert secret not in logs



def test_cookies_an_upstream_sets_are_not_sent_on_later_requests(fake_upstream_server):
    """One user's upstream session cookie must not ride along on another user's request."""
    import asyncio

    from engine.pipeline.translate import UpstreamRequest
    from engine.pipeline.upstream import Upstream

    # By host name: aiohttp's default jar ignores cookies from IP addresses, names it keeps.
    url = fake_upstream_server.url.replace("127.0.0.1", "localhost") + "/v1/messages"
    fake_upstream_server.clear()
    fake_upstream_server.reply_fixture("anthropic", "messages_text.json", headers={"set-cookie": "session=user-a; Path=/"})
    fake_upstream_server.reply_fixture("anthropic", "messages_text.json")

    async def two_requests() -> None:
        upstream = Upstream()
        try:
            for _ in range(2):
                reply = await upstream.send(UpstreamRequest("POST", url, {}, {"model": "m"}, False))
                assert reply.status == 200
        finally:
            await upstream.close()

    asyncio.run(two_requests())
    assert len(fake_upstream_server.requests) == 2
    assert "cookie" not in {name.lower() for name in fake_upstream_server.requests[-1].headers}
