"""End to end with the shipped bedrock spec: the openai SDK -> the gateway (a real `serve` process)
-> a fake Bedrock Runtime that checks SigV4 with botocore (or the bearer API key) and streams
ConverseStream event-stream frames back, split inside frames. And `spec record` against the same
fake: it signs as the gateway does, or says which variables it needs."""

from __future__ import annotations

import base64
import datetime
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import orjson
import pytest
import yaml
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from click.testing import CliRunner, Result

from engine.cli.commands import main
from engine.cli.recordings import _messages, _stream_bytes
from tests.conftest import ROOT, RunningGateway, start_gateway
from tests.eventstream_frames import event, exception
from tests.fakes import LoopbackServer

KEY, SECRET, TOKEN = "AKIDBEDROCKTEST", "bedrock/secret+test0123456789abcdefXYZ", "bedrock-session-token-0001=="
BEARER = "ABSKbedrockapikeytest0123456789"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


class FakeBedrock:
    """Accepts a request signed for bedrock/eu-west-3 (verified with botocore), or the bearer key."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        #: What a (non-stream) Converse request is answered with.
        self.reply: dict[str, Any] = {}
        self.seen: list[dict[str, Any]] = []
        self.server = LoopbackServer()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.url = self.server.serve(app)

    def signed(self, request: web.Request, body: bytes) -> bool:
        given = request.headers.get("Authorization", "")
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/eu-west-3/bedrock/aws4_request, "
                             r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}", given)
        if match is None or match[1] != KEY:
            return False
        headers = {name: request.headers[name] for name in match[2].split(";") if name in request.headers}
        aws = AWSRequest(method=request.method, url=f"{self.url}{request.raw_path}", data=body, headers=headers)
        when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            SigV4Auth(Credentials(KEY, SECRET, TOKEN), "bedrock", "eu-west-3").add_auth(aws)
        return bool(aws.headers["Authorization"] == given)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        ok = auth == f"Bearer {BEARER}" or self.signed(request, body)
        self.seen.append({"path": request.raw_path, "ok": ok, "auth": auth.split(" ")[0], "body": orjson.loads(body)})
        if not ok:
            return web.json_response({"message": "The security token included in the request is invalid."}, status=403,
                                     headers={"x-amzn-ErrorType": "UnrecognizedClientException:http://internal.amazon.com/coral/"})
        if request.path.endswith("/converse"):
            return web.json_response(self.reply)
        response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        whole = b"".join(self.frames)
        for start in range(0, len(whole), 7):  # splits inside every frame
            await response.write(whole[start:start + 7])
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    server = FakeBedrock()
    yield server
    server.server.stop()


def _gateway(tmp: Path, fake: FakeBedrock, **env: str) -> RunningGateway:
    (tmp / "providers.d").mkdir()
    (tmp / "pricing.d").mkdir()
    shutil.copy(ROOT / "providers.d" / "bedrock.yaml", tmp / "providers.d")
    shutil.copy(ROOT / "pricing.d" / "bedrock.yaml", tmp / "pricing.d")
    (tmp / "routes.yaml").write_text("defaults:\n  retry: 'false'\n  fallback: 'false'\n")
    return start_gateway({"GAUD_SPECS_DIR": str(tmp), "GAUD_AUTH_ENABLED": "false", "BEDROCK_BASE_URL": fake.url,
                          "AWS_REGION": "eu-west-3", **env}, tmp / "gw.log")


@pytest.fixture(scope="module")
def signed(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = _gateway(tmp_path_factory.mktemp("sigv4"), fake, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                       AWS_SESSION_TOKEN=TOKEN)
    yield running
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture(scope="module")
def bearer(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # Both credentials set: the API key wins, the request goes unsigned.
    running = _gateway(tmp_path_factory.mktemp("bearer"), fake, AWS_BEARER_TOKEN_BEDROCK=BEARER,
                       AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY="wrong-secret")
    yield running
    running.process.terminate()
    running.process.wait(10)


def _client(gateway: RunningGateway, fake: FakeBedrock, frames: list[bytes]) -> openai.OpenAI:
    fake.frames, fake.seen[:] = frames, []
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=20)


def _conversation() -> list[bytes]:
    return [
        event("messageStart", {"role": "assistant", "p": "abcdefgh"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Demat "}, "p": "ab"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "dit! ✓"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_e2e1", "name": "tides"}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"harbour":'}}}),
        event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ' "Brest"}'}}}),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 49, "cacheReadInputTokens": 10},
                           "metrics": {"latencyMs": 120}}),
    ]


TOOLS: Any = [{"type": "function", "function": {"name": "tides", "parameters": {"type": "object", "properties": {"harbour": {"type": "string"}}}}}]


def test_a_signed_converse_stream_through_the_gateway(signed: RunningGateway, fake: FakeBedrock) -> None:
    client = _client(signed, fake, _conversation())
    chunks = list(client.chat.completions.create(
        model=f"bedrock/{MODEL}", messages=[{"role": "user", "content": "Salud ✓"}], tools=TOOLS, stream=True,
        stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Demat dit! ✓"
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "tooluse_e2e1" and calls[0].function and calls[0].function.name == "tides"
    assert "".join(t.function.arguments or "" for t in calls if t.function) == '{"harbour": "Brest"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (40, 9)
    (seen,) = fake.seen
    assert seen["ok"] and seen["auth"] == "AWS4-HMAC-SHA256"
    assert seen["path"] == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
    assert seen["body"]["messages"] == [{"role": "user", "content": [{"text": "Salud ✓"}]}]
    assert seen["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "tides"
    logs = signed.logs_with(MODEL)
    assert SECRET not in logs and TOKEN not in logs and KEY not in logs


def test_the_api_key_wins_and_the_request_is_not_signed(bearer: RunningGateway, fake: FakeBedrock) -> None:
    client = _client(bearer, fake, [*_conversation()[:4], event("messageStop", {"stopReason": "end_turn"})])
    chunks = list(client.chat.completions.create(model=f"bedrock/{MODEL}", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Demat dit! ✓"
    assert [(s["ok"], s["auth"]) for s in fake.seen] == [(True, "Bearer")]
    assert BEARER not in bearer.logs_with(MODEL)


def test_an_exception_frame_first_is_a_classified_error(signed: RunningGateway, fake: FakeBedrock) -> None:
    client = _client(signed, fake, [event("messageStart", {"role": "assistant"}),
                                    exception("throttlingException", "Too many tokens, please wait.")])
    with pytest.raises(openai.RateLimitError) as caught:
        list(client.chat.completions.create(model=f"bedrock/{MODEL}", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "Too many tokens" in str(caught.value)


def test_a_rejected_signature_is_an_authentication_error(signed: RunningGateway, fake: FakeBedrock) -> None:
    client = _client(signed, fake, [])
    with mock.patch.object(FakeBedrock, "signed", return_value=False), pytest.raises(openai.AuthenticationError) as caught:
        list(client.chat.completions.create(model=f"bedrock/{MODEL}", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert "security token" in str(caught.value)


# -- spec record -----------------------------------------------------------------------------------
CONVERSE_REPLY = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Rivers carry dissolved minerals to it."}]}},
    "stopReason": "end_turn", "usage": {"inputTokens": 16, "outputTokens": 8, "totalTokens": 24}, "metrics": {"latencyMs": 80},
}


def _record(tmp: Path, fake: FakeBedrock, **env: str | None) -> tuple[Result, Path]:
    tree = tmp / "specs"
    for folder in ("providers.d", "pricing.d"):
        (tree / folder).mkdir(parents=True)
        shutil.copy(ROOT / folder / "bedrock.yaml", tree / folder)
    (tree / "routes.yaml").write_text("defaults:\n  retry: 'false'\n")
    out = tree / "tests" / "providers" / "bedrock" / "recordings"  # the spec's recordings folder
    unset: dict[str, str | None] = dict.fromkeys(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_DEFAULT_REGION"))
    result = CliRunner().invoke(main, ["spec", "record", "--provider", "bedrock", "--specs", str(tree), "--model", MODEL],
                                env={**unset, "BEDROCK_BASE_URL": fake.url, "AWS_REGION": "eu-west-3", **env})
    return result, out


def test_spec_record_signs_as_the_gateway_does(fake: FakeBedrock, tmp_path: Path) -> None:
    fake.frames, fake.seen[:], fake.reply = _conversation(), [], CONVERSE_REPLY
    result, out = _record(tmp_path, fake, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN)
    assert result.exit_code == 0, result.output
    # Every request reached the fake signed for bedrock/eu-west-3, and botocore agreed with the signature.
    assert [(s["ok"], s["auth"]) for s in fake.seen] == [(True, "AWS4-HMAC-SHA256")] * 3
    assert [s["path"].rsplit("/", 1)[1] for s in fake.seen] == ["converse", "converse", "converse-stream"]
    assert all(s["path"].startswith("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/") for s in fake.seen)
    assert "note," not in result.output  # what was sent is what the replay builds, signature aside
    files = {p.stem: p.read_text() for p in out.glob("*.yaml")}
    assert sorted(files) == ["recorded-stream", "recorded-text", "recorded-tool-call"]
    for text in files.values():
        assert KEY not in text and SECRET not in text and TOKEN not in text
    text = yaml.safe_load(files["recorded-text"])
    # The signed mode is recorded as such: the API key that would stand in for the signature is
    # listed unset (as is every variable the exchanges were made without).
    assert text["unset"] == ["AWS_DEFAULT_REGION", "AWS_BEARER_TOKEN_BEDROCK"]
    assert text["expect"]["upstream_call"]["headers"]["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=<AWS_ACCESS_KEY_ID>/20260101/<AWS_REGION>/bedrock/aws4_request, ")
    assert text["expect"]["response"]["choices"][0]["message"]["content"] == "Rivers carry dissolved minerals to it."
    # The binary stream is stored as its messages, which the replay turns back into the same reply.
    stream = yaml.safe_load(files["recorded-stream"])
    assert stream["upstream"]["stream"][1] == {"event": "contentBlockDelta",
                                               "payload": {"contentBlockIndex": 0, "delta": {"text": "Demat "}, "p": "ab"}}
    assert stream["expect"]["chunks"][-1]["usage"]["prompt_tokens"] == 40
    replayed = CliRunner().invoke(main, ["spec", "test", str(tmp_path / "specs" / "providers.d" / "bedrock.yaml")])
    assert replayed.output.rstrip().endswith("3 passed, 0 failed"), replayed.output


def test_spec_record_with_a_wrong_secret_is_refused_by_the_fake(fake: FakeBedrock, tmp_path: Path) -> None:
    fake.frames, fake.seen[:], fake.reply = _conversation(), [], CONVERSE_REPLY
    result, out = _record(tmp_path, fake, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY="not-the-secret",
                          AWS_SESSION_TOKEN=TOKEN)
    assert result.exit_code == 0, result.output
    assert [s["ok"] for s in fake.seen] == [False] * 3
    upstream = yaml.safe_load((out / "recorded-text.yaml").read_text())["upstream"]
    assert upstream == {"status": 403, "body": {"message": "The security token included in the request is invalid."}}


def test_spec_record_without_credentials_names_the_variables(fake: FakeBedrock, tmp_path: Path) -> None:
    fake.seen[:] = []
    result, out = _record(tmp_path, fake, AWS_ACCESS_KEY_ID=KEY)
    assert result.exit_code == 1
    assert ("bedrock cannot sign its requests: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_BEARER_TOKEN_BEDROCK) in the environment") in result.output
    assert fake.seen == [] and not out.exists()


def test_a_recorded_event_stream_keeps_every_byte() -> None:
    whole = b"".join(_conversation())
    messages = _messages(whole)
    assert len(messages) == len(_conversation()) and _stream_bytes(messages) == whole  # written back byte for byte
    assert _messages(whole[:-5]) == [{"bytes": base64.b64encode(whole[:-5]).decode()}]  # cut inside a message
    corrupt = whole[:20] + bytes([whole[20] ^ 1]) + whole[21:]
    assert _stream_bytes(_messages(corrupt)) == corrupt  # a bad checksum is kept as it came, not mended
