"""End to end: the openai SDK -> the gateway (a real `serve` process) -> a fake upstream that checks
every request's SigV4 signature with botocore and streams AWS event-stream frames back.

The spec is a minimal one written here (the published shapes of a Converse-style API), in a tmp tree."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import orjson
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import RunningGateway, start_gateway
from tests.eventstream_frames import event, exception
from tests.fakes import LoopbackServer

KEY, SECRET, TOKEN = "AKIDSIGNEDTEST", "signed/secret+test0123456789abcdefXYZ", "session-token-test-0001=="
MODEL = "us.acme.model-v1:0"

SPEC = """\
description: A signed upstream that streams the AWS event-stream encoding (test)
api:
  base_url: http://127.0.0.1:1
  env:
    SIGNED_BASE_URL: {base_url: true}
    AWS_ACCESS_KEY_ID: {secret: true, required: true}
    AWS_SECRET_ACCESS_KEY: {secret: true, required: true}
    AWS_SESSION_TOKEN: {secret: true}
    AWS_REGION: {}
  auth: {type: aws_sigv4, service: bedrock, region: us-east-1}
  endpoints:
    chat:
      path: "/model/{{ model | path_segment }}/converse"
      stream_path: "/model/{{ model | path_segment }}/converse-stream"
models:
  "us.acme.model-v1:0": {context_window: 8192, max_output_tokens: 1024, capabilities: [], free: true, reason: a test fake}
request:
  map:
    - {to: /messages, from: /messages}
    - {to: /inferenceConfig/maxTokens, from: [/max_completion_tokens, /max_tokens]}
response:
  map:
    - {to: /choices/0/message/content, from: /output/message/content/0/text}
    - {to: /choices/0/finish_reason, from: /stopReason}
  usage:
    from: /usage
    map:
      - {to: /prompt_tokens, from: /inputTokens}
      - {to: /completion_tokens, from: /outputTokens}
  finish_reasons: {end_turn: stop, max_tokens: length, _default: stop}
stream:
  framing: aws_eventstream
  key: event
  ends_with: finish
  events:
    contentBlockDelta: [{text: /delta/text}]
    messageStop: [{finish: /stopReason}]
    metadata: [{usage: /usage}]
    _default: [ignore]
errors:
  message_from: [/message, /Message]
  by_code: {throttlingException: rate_limit, validationException: invalid_request}
  by_status: {"403": authentication, "429": rate_limit, _default: upstream_5xx}
"""

ROUTES = "defaults:\n  retry: 'false'\n  fallback: 'false'\n"


class SigningUpstream:
    """Verifies each request's signature with botocore, then plays the queued frames."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.reply_json: dict[str, Any] | None = None
        self.seen: list[dict[str, Any]] = []
        self.server = LoopbackServer()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.url = self.server.serve(app)

    def verified(self, request: web.Request, body: bytes) -> bool:
        given = request.headers.get("Authorization", "")
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request, "
                             r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}", given)
        if match is None or match[1] != KEY:
            return False
        signed = match[4].split(";")
        headers = {name: request.headers[name] for name in signed if name in request.headers}
        aws = AWSRequest(method=request.method, url=f"{self.url}{request.raw_path}", data=body, headers=headers)
        when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            SigV4Auth(Credentials(KEY, SECRET, request.headers.get("X-Amz-Security-Token")), match[3], match[2]).add_auth(aws)
        return bool(aws.headers["Authorization"] == given and set(signed) >= {"host", "x-amz-date", "content-type"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ok = self.verified(request, body)
        self.seen.append({"path": request.raw_path, "ok": ok, "token": request.headers.get("X-Amz-Security-Token"),
                          "body": orjson.loads(body)})
        if not ok:
            return web.json_response({"message": "The request signature we calculated does not match"}, status=403,
                                     headers={"x-amzn-ErrorType": "InvalidSignatureException"})
        if self.reply_json is not None:
            return web.json_response(self.reply_json)
        response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        for frame in self.frames:
            await response.write(frame)
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def signing_upstream() -> Iterator[SigningUpstream]:
    fake = SigningUpstream()
    yield fake
    fake.server.stop()


@pytest.fixture(scope="module")
def signed_gateway(signing_upstream: SigningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("signed")
    (tmp / "providers.d").mkdir()
    (tmp / "providers.d" / "signed.yaml").write_text(SPEC)
    (tmp / "routes.yaml").write_text(ROUTES)
    running = start_gateway({
        "GAUD_SPECS_DIR": str(tmp), "GAUD_AUTH_ENABLED": "false", "SIGNED_BASE_URL": signing_upstream.url,
        "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN, "AWS_REGION": "us-east-1",
    }, tmp / "gw.log")
    yield running
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture
def client(signed_gateway: RunningGateway, signing_upstream: SigningUpstream) -> openai.OpenAI:
    signing_upstream.frames, signing_upstream.reply_json, signing_upstream.seen[:] = [], None, []
    return openai.OpenAI(base_url=f"{signed_gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


def _conversation(text: str = "Grüße, ") -> list[bytes]:
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in (text, "世界", " 🌍")]
    frames += [event("contentBlockStop", {"contentBlockIndex": 0}), event("messageStop", {"stopReason": "end_turn"})]
    frames.append(event("metadata", {"usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}, "metrics": {}}))
    return frames


def test_a_streamed_request_is_signed_and_its_event_stream_relayed(client: openai.OpenAI, signing_upstream: SigningUpstream) -> None:
    whole = b"".join(_conversation())
    signing_upstream.frames = [whole[i:i + 13] for i in range(0, len(whole), 13)]  # splits inside every frame
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hallo ✓"}], stream=True, stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Grüße, 世界 🌍"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 4)
    (seen,) = signing_upstream.seen
    assert seen["ok"] and seen["token"] == TOKEN
    assert seen["path"] == "/model/us.acme.model-v1%3A0/converse-stream"  # the id's `:` encoded once on the wire
    assert seen["body"]["messages"][0]["content"] == "Hallo ✓"


def test_a_non_streamed_request_is_signed_too(client: openai.OpenAI, signing_upstream: SigningUpstream) -> None:
    signing_upstream.reply_json = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hi there"}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
    }
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hi there" and reply.usage is not None and reply.usage.total_tokens == 5
    assert [s["ok"] for s in signing_upstream.seen] == [True]
    assert signing_upstream.seen[0]["path"] == "/model/us.acme.model-v1%3A0/converse"


def test_an_exception_frame_before_any_text_is_a_classified_error(client: openai.OpenAI, signing_upstream: SigningUpstream) -> None:
    signing_upstream.frames = [event("messageStart", {"role": "assistant"}), exception("throttlingException", "Too many tokens")]
    with pytest.raises(openai.RateLimitError) as caught:
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "Too many tokens" in str(caught.value)


def test_an_exception_frame_mid_stream_ends_it_with_an_error_event(client: openai.OpenAI, signing_upstream: SigningUpstream) -> None:
    signing_upstream.frames = [*_conversation()[:3], exception("throttlingException", "Too many tokens")]
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "Grüße, 世界" and "Too many tokens" in str(caught.value)


def test_a_corrupted_frame_mid_stream_is_a_parsing_error_not_a_hang(client: openai.OpenAI, signing_upstream: SigningUpstream) -> None:
    frames = _conversation()
    bad = bytearray(frames[3])
    bad[-5] ^= 0x01  # the payload's last byte: the message CRC no longer matches
    signing_upstream.frames = [*frames[:3], bytes(bad), *frames[4:]]
    with pytest.raises(openai.APIError) as caught:
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "checksum" in str(caught.value)


def test_no_secret_reaches_the_log(client: openai.OpenAI, signed_gateway: RunningGateway, signing_upstream: SigningUpstream) -> None:
    signing_upstream.frames = _conversation()
    list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True))
    logs = signed_gateway.logs_with(MODEL)  # the request line is written
    assert SECRET not in logs and TOKEN not in logs and KEY not in logs
