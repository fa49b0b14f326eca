"""`api.auth: aws_sigv4`: our signer against botocore's SigV4Auth on the same request and time."""

from __future__ import annotations

import datetime
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from engine.errors import NotConfigured
from engine.spec.common import EnvVar, SpecCompileError, jinja_template
from engine.spec.credentials import compile_auth
from engine.spec.sigv4 import SigV4Credentials, sign_request

NOW = datetime.datetime(2025, 3, 14, 15, 9, 26, tzinfo=datetime.UTC)
KEY, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLE//token=="
BASE = "https://bedrock-runtime.us-east-1.amazonaws.com"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0"
SEGMENT = jinja_template("{{ model | path_segment }}", "/x")

MODELS = [
    "anthropic.claude-3-5-sonnet-20240620-v1:0", ARN, "meta.llama3 70b instruct", "amazon.nova-pro-v1:0",
    "modèle/ünïcode:1", "a~b_c.d-e", "x%y",
]
QUERIES: list[list[tuple[str, str]]] = [
    [], [("b", "2"), ("a", "1")], [("q", "a b"), ("q", "a:b"), ("z", "ü/é")], [("empty", "")], [("k", "v=w&x")],
]
BODIES: list[bytes] = [
    b"", orjson.dumps({"messages": [{"role": "user", "content": [{"text": "Hello"}]}]}),
    orjson.dumps({"messages": [{"role": "user", "content": [{"text": "Grüße 世界 🌍"}]}]}), b"{}",
]


def _cases() -> list[tuple[str, str, list[tuple[str, str]], bytes, str | None, dict[str, str]]]:
    cases = []
    i = 0
    for model in MODELS:
        for op in ("converse", "converse-stream"):
            for token in (None, TOKEN):
                query = QUERIES[i % len(QUERIES)]
                body = BODIES[i % len(BODIES)]
                headers = {"content-type": "application/json"}
                if i % 3 == 0:
                    headers["Accept"] = "application/vnd.amazon.eventstream"
                if i % 5 == 0:
                    headers["X-Custom"] = "  spaced   value  "
                cases.append(("POST" if body else "GET", f"/model/{SEGMENT.render(model=model)}/{op}", query, body, token, headers))
                i += 1
    return cases


CASES = _cases()


def test_there_are_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


def _botocore(method: str, url: str, query: list[tuple[str, str]], body: bytes, token: str | None,
              headers: dict[str, str], service: str = "bedrock", region: str = "us-east-1") -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers), params=query or None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        SigV4Auth(Credentials(KEY, SECRET, token), service, region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize(("method", "path", "query", "body", "token", "headers"), CASES)
def test_headers_equal_botocore(
    method: str, path: str, query: list[tuple[str, str]], body: bytes, token: str | None, headers: dict[str, str]
) -> None:
    url = BASE + path + ("?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in query) if query else "")
    creds = SigV4Credentials(KEY, SECRET, token, "us-east-1", "bedrock")
    wire, ours = sign_request(creds, method, url, headers, body, now=NOW)
    # botocore signs the path as it goes on the wire; the query from the decoded parameters.
    theirs = _botocore(method, BASE + wire.raw_path, query, body, token, headers)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        assert ours.get(name) == theirs.get(name), name
    assert ("X-Amz-Security-Token" in ours) == (token is not None)
    # The wire path keeps the template's escapes: `:` and `/` of the model id stay encoded.
    assert wire.raw_path == path and ":" not in wire.raw_path and wire.raw_path.count("/") == 3
    assert sorted(parse_qsl(urlsplit(str(wire)).query, keep_blank_values=True)) == sorted(query)


def test_an_arn_is_one_path_segment_encoded_once_on_the_wire_and_twice_when_signed() -> None:
    creds = SigV4Credentials(KEY, SECRET, None, "us-west-2", "bedrock")
    wire, ours = sign_request(creds, "POST", f"{BASE}/model/{SEGMENT.render(model=ARN)}/converse", {}, b"{}", now=NOW)
    assert wire.raw_path.count("/") == 3 and "%3A" in wire.raw_path and "%2F" in wire.raw_path
    theirs = _botocore("POST", BASE + wire.raw_path, [], b"{}", None, {}, region="us-west-2")
    assert ours["Authorization"] == theirs["Authorization"]
    assert "Credential=AKIDEXAMPLE/20250314/us-west-2/bedrock/aws4_request" in ours["Authorization"]
    assert "SignedHeaders=host;x-amz-date," in ours["Authorization"]


def test_a_different_body_port_or_service_changes_the_signature() -> None:
    creds = SigV4Credentials(KEY, SECRET, None, "us-east-1", "bedrock")
    url = f"{BASE}/model/m/converse"
    base = sign_request(creds, "POST", url, {}, b"{}", now=NOW)[1]["Authorization"]
    assert sign_request(creds, "POST", url, {}, b"{ }", now=NOW)[1]["Authorization"] != base
    other = SigV4Credentials(KEY, SECRET, None, "us-east-1", "sagemaker")
    assert sign_request(other, "POST", url, {}, b"{}", now=NOW)[1]["Authorization"] != base
    local = "http://127.0.0.1:8123/model/m/converse"
    wire, headers = sign_request(creds, "POST", local, {}, b"{}", now=NOW)
    assert headers["Authorization"] == _botocore("POST", local, [], b"{}", None, {})["Authorization"]
    assert wire.port == 8123


def test_headers_the_spec_set_for_the_signature_are_replaced_and_secrets_not_in_repr() -> None:
    creds = SigV4Credentials(KEY, SECRET, TOKEN, "us-east-1", "bedrock")
    _, headers = sign_request(creds, "POST", f"{BASE}/x", {"authorization": "Bearer stale", "X-Amz-Date": "old"}, b"", now=NOW)
    assert "authorization" not in headers and "X-Amz-Date" in headers and headers["X-Amz-Date"] == "20250314T150926Z"
    assert SECRET not in repr(creds) and TOKEN not in repr(creds) and KEY not in repr(creds)
    assert SECRET not in str(headers)


ENV = {n: EnvVar(n, secret=True) for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                                           "AWS_DEFAULT_REGION", "TEAM_KEY")}


def _auth(raw: dict[str, Any], env: dict[str, EnvVar] | None = None) -> Any:
    return compile_auth("acme", {"type": "aws_sigv4", "service": "bedrock", **raw}, ENV if env is None else env)


def test_variables_default_to_the_standard_aws_names_and_the_first_region_set_wins() -> None:
    sigv4 = _auth({}).sigv4
    assert (sigv4.access_key_env, sigv4.session_token_env, sigv4.region_env) == (
        "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", ("AWS_REGION", "AWS_DEFAULT_REGION"))
    creds = sigv4.credentials({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (creds.region, creds.session_token) == ("eu-west-1", None)
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "x"}
    assert sigv4.credentials(env).region == "us-west-2"
    assert _auth({"access_key_env": "TEAM_KEY", "region": "ap-south-1", "region_env": []}).sigv4.credentials(
        {"TEAM_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s"}).region == "ap-south-1"


def test_missing_credentials_are_not_configured_and_name_variables_not_values() -> None:
    sigv4 = _auth({}).sigv4
    with pytest.raises(NotConfigured) as caught:
        sigv4.credentials({"AWS_ACCESS_KEY_ID": "AKIAVALUE", "AWS_REGION": "us-east-1"})
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.message and "AKIAVALUE" not in caught.value.message
    with pytest.raises(NotConfigured) as caught:
        sigv4.credentials({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert "AWS_REGION or AWS_DEFAULT_REGION" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "env", "pointer"),
    [
        ({"access_key_env": "NOPE"}, None, "/api/auth/access_key_env"),
        ({}, {"AWS_REGION": EnvVar("AWS_REGION")}, "/api/auth/access_key_env"),
        ({"region_env": "NOPE"}, None, "/api/auth/region_env"),
        ({}, {n: ENV[n] for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}, "/api/auth/region_env"),
        ({"headers": {"Authorization": "x"}}, None, "/api/auth/type"),
        ({"env": "TEAM_KEY"}, None, "/api/auth/env"),
    ],
)
def test_spec_mistakes_are_compile_errors_with_a_pointer(raw: dict[str, Any], env: Any, pointer: str) -> None:
    with pytest.raises(SpecCompileError) as caught:
        _auth(raw, env)
    assert caught.value.pointer == pointer


def test_other_strategies_reject_sigv4_fields() -> None:
    with pytest.raises(SpecCompileError) as caught:
        compile_auth("acme", {"type": "api_key", "env": "TEAM_KEY", "service": "bedrock"}, ENV)
    assert caught.value.pointer == "/api/auth/service"


@pytest.mark.parametrize(("environ", "hint"), [
    ({}, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_BEARER_TOKEN_BEDROCK)"),
    ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_BEARER_TOKEN_BEDROCK)"),
    ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}, None),
    ({"AWS_BEARER_TOKEN_BEDROCK": "bedrock-api-key"}, None),
])
def test_a_signing_provider_without_its_identity_is_not_configured(environ, hint):
    """The start-up banner, /health and the not_configured skip read setup_hint: a provider that
    signs is not "ready" until it can sign (or carries its stand-in credential); no value is named."""
    from engine.pipeline.routing import Router
    from engine.spec.loader import load_catalog

    catalog = load_catalog(environ=environ)
    assert catalog.providers["bedrock"].setup_hint() == hint
    assert Router(catalog).unconfigured.get("bedrock") == hint
    assert all(value not in str(hint) for value in environ.values())
