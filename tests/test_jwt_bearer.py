"""The OAuth 2.0 JWT bearer grant (`api.auth.type: jwt_bearer`, RFC 7523 section 2.1).

A test RSA key is generated here and written as a service-account style key file. A fake token
endpoint verifies each assertion's RS256 signature with the key's public half and its header (alg,
kid) and claims (iss, scope, aud, iat, exp) before it hands out a token. Checked here: 50 concurrent
first requests cause one token request; a token near expiry is replaced; a refused assertion is an
`authentication` error; a missing, unreadable or malformed key file is `not_configured` and names
the variable, never the key; an unset variable leaves the plain headers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from engine.credentials import compile_auth
from engine.errors import AuthenticationFailed, NotConfigured
from engine.spec.loader import load_catalog
from engine.spec.provider import EnvVar, SpecCompileError

from .credential_kit import FakeClock, assert_compile_error, manager
from .fakes import LoopbackServer
from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent
SCOPE = "https://api.acme.test/auth/cloud https://api.acme.test/auth/extra"
EMAIL = "gateway@acme-project.iam.example.test"
KEY_ID = "0123456789abcdef0123456789abcdef01234567"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
T0 = 1_800_000_000.0


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class TokenEndpoint:
    """Accepts only a well-formed, correctly signed, current assertion for the expected audience."""

    public_key: rsa.RSAPublicKey
    clock: FakeClock
    delay: float = 0.0
    lifetime: float = 3600.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = LoopbackServer()
        self.url = ""

    def check(self, form: dict[str, str]) -> str | None:
        """What is wrong with the request, or None."""
        if form.get("grant_type") != GRANT or set(form) != {"grant_type", "assertion"}:
            return "unsupported_grant_type"
        parts = form["assertion"].split(".")
        if len(parts) != 3:
            return "malformed"
        header, claims = (json.loads(_unb64(p)) for p in parts[:2])
        try:
            self.public_key.verify(_unb64(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad signature"
        if header != {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}:
            return f"bad header {header}"
        expected = {"iss": EMAIL, "scope": SCOPE, "aud": f"{self.url}/token", "iat": int(self.clock.now),
                    "exp": int(self.clock.now) + 3600}
        return None if claims == expected else f"bad claims {claims}"

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        problem = self.check(form)
        if problem is not None:
            return web.json_response({"error": "invalid_grant", "error_description": problem}, status=400)
        token = f"ya29.tok-{len(self.issued)}-{secrets.token_urlsafe(8)}"
        self.issued.append(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime})

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self.token)
        self.url = self._server.serve(app)

    def stop(self) -> None:
        if self.url:
            self._server.stop()
            self.url = ""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def endpoint(private_key: rsa.RSAPrivateKey, clock: FakeClock) -> Iterator[TokenEndpoint]:
    fake = TokenEndpoint(private_key.public_key(), clock)
    fake.start()
    yield fake
    fake.stop()


def key_file(tmp_path: Path, key: Any, endpoint: TokenEndpoint, **changes: Any) -> Path:
    data = {"type": "service_account", "project_id": "acme-project", "private_key_id": KEY_ID,
            "private_key": pem(key), "client_email": EMAIL, "client_id": "1234567890",
            "token_uri": f"{endpoint.url}/token", **changes}
    path = tmp_path / "key.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return path


def spec_text(url: str) -> str:
    return f"""\
extends: openai
description: JWT bearer test provider
api:
  base_url: https://api.acme.test/v1
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    ACME_KEY_FILE: {{description: path of the service-account key file}}
  headers:
    Authorization: null
  auth:
    type: jwt_bearer
    token_url: "{url}/token"
    key_file_env: ACME_KEY_FILE
    scopes: {json.dumps(SCOPE.split())}
    refresh_before_seconds: 300
    headers:
      Authorization: "Bearer {{{{ credentials.access_token }}}}"
models:
  m1: {{context_window: 100000, max_output_tokens: 1000, capabilities: [], free: true, reason: test model}}
"""


def load(tmp_path: Path, url: str, key_path: Path | str) -> Any:
    tree = tmp_path / "specs"
    (tree / "providers.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "providers.d" / "openai.yaml", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d", dirs_exist_ok=True)
    copy_models(tree)
    (tree / "providers.d" / "acme-jwt.yaml").write_text(spec_text(url))
    catalog = load_catalog(tree, environ={"ACME_KEY_FILE": str(key_path)} if key_path else {})
    catalog.raise_for_problems()
    return catalog.providers["acme-jwt"]




def test_the_assertion_is_signed_and_claims_what_rfc_7523_asks(tmp_path, store, endpoint, clock, private_key):
    spec = load(tmp_path, endpoint.url, key_file(tmp_path, private_key, endpoint))
    token = asyncio.run(manager(store, clock).access_token(spec))
    assert token == endpoint.issued[0], endpoint.requests
    assert spec.headers_for_token("m1", None, token)["Authorization"] == f"Bearer {token}"
    assert store.list_credentials() == []  # kept in memory only


def test_fifty_concurrent_first_requests_cause_one_token_request(tmp_path, store, endpoint, clock, private_key):
    spec = load(tmp_path, endpoint.url, key_file(tmp_path, private_key, endpoint))
    endpoint.delay = 0.2
    creds = manager(store, clock)

    async def fifty() -> list[str | None]:
        return await asyncio.gather(*(creds.access_token(spec) for _ in range(50)))

    tokens = asyncio.run(fifty())
    assert len(endpoint.requests) == 1 and set(tokens) == {endpoint.issued[0]}


def test_token_cached_then_renewed_with_a_fresh_assertion(tmp_path, store, endpoint, clock, private_key):
    spec = load(tmp_path, endpoint.url, key_file(tmp_path, private_key, endpoint))
    creds = manager(store, clock)

    async def scenario() -> None:
        first = await creds.access_token(spec)
        clock.now += 3600 - 300 - 1
        assert await creds.access_token(spec) == first and len(endpoint.requests) == 1
        clock.now += 2  # inside the renewal window: a new assertion (new iat/exp), a new token
        second = await creds.access_token(spec)
        assert second == endpoint.issued[1] != first
        assert endpoint.requests[0]["assertion"] != endpoint.requests[1]["assertion"]

    asyncio.run(scenario())


def test_a_key_the_server_does_not_know_is_an_authentication_error(tmp_path, store, endpoint, clock):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spec = load(tmp_path, endpoint.url, key_file(tmp_path, stranger, endpoint))
    creds = manager(store, clock)
    with pytest.raises(AuthenticationFailed) as caught:
        asyncio.run(creds.access_token(spec))
    assert "invalid_grant" in caught.value.message and "ACME_KEY_FILE" in caught.value.message
    with pytest.raises(AuthenticationFailed):  # remembered, not asked again per request
        asyncio.run(creds.access_token(spec))
    assert len(endpoint.requests) == 1


def _not_json(tmp: Path, key: Any, endpoint: TokenEndpoint) -> Path:
    path = tmp / "key.json"
    path.write_text("-----BEGIN PRIVATE KEY-----\n" + pem(key).splitlines()[1] + "\n{ not json")
    return path


BROKEN = {
    "missing file": (lambda tmp, key, ep: tmp / "nope.json", "Cannot read"),
    "a directory": (lambda tmp, key, ep: tmp, "Cannot read"),
    "not JSON": (_not_json, "is not JSON"),
    "no private key": (lambda tmp, key, ep: key_file(tmp, key, ep, private_key=None), "lacks private_key"),
    "no email": (lambda tmp, key, ep: key_file(tmp, key, ep, client_email=""), "lacks issuer"),
    "garbage PEM": (lambda tmp, key, ep: key_file(tmp, key, ep, private_key=pem(key)[:200] + "AAAA\n-----END PRIVATE KEY-----\n"),
                    "not an unencrypted PEM RSA key"),
    "an EC key": (lambda tmp, key, ep: key_file(tmp, key, ep, private_key=pem(ec.generate_private_key(ec.SECP256R1()))),
                  "not an unencrypted PEM RSA key"),
    "a list": (lambda tmp, key, ep: (tmp / "k.json", (tmp / "k.json").write_text("[1, 2]"))[0], "lacks issuer and private_key"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_an_unusable_key_file_is_not_configured_and_shows_no_key(tmp_path, store, endpoint, clock, private_key, caplog, case):
    make, expected = BROKEN[case]
    spec = load(tmp_path, endpoint.url, make(tmp_path, private_key, endpoint))
    creds = manager(store, clock)
    with pytest.raises(NotConfigured) as caught:
        asyncio.run(creds.access_token(spec))
    message = caught.value.message
    assert expected in message and "ACME_KEY_FILE" in message
    body = pem(private_key).splitlines()[1]
    assert body not in message and body not in caplog.text and EMAIL not in message
    assert endpoint.requests == []


def test_an_unset_key_file_variable_leaves_the_plain_headers(tmp_path, store, endpoint, clock):
    spec = load(tmp_path, endpoint.url, "")
    assert asyncio.run(manager(store, clock).access_token(spec)) is None and endpoint.requests == []


ENV = {"KEY": EnvVar("KEY"), "ID": EnvVar("ID")}
RAW = {"type": "jwt_bearer", "token_url": "https://oauth.test/token", "key_file_env": "KEY",
       "headers": {"Authorization": "Bearer {{ credentials.access_token }}"}}


@pytest.mark.parametrize(("change", "pointer", "message"), [
    ({"key_file_env": "NOPE"}, "/api/auth/key_file_env", "does not declare"),
    ({"client_id_env": "ID"}, "/api/auth/client_id_env", "no effect with type jwt_bearer"),
    ({"client_auth": "client_secret_basic"}, "/api/auth/client_auth", "no effect with type jwt_bearer"),
    ({"key_fields": {"issuer": "no-slash"}}, "/api/auth/key_fields/issuer", ""),
    ({"headers": None}, "/api/auth/headers", "say where the token goes"),
])
def test_compile_errors_name_the_field(change, pointer, message):
    assert_compile_error({**RAW, **change}, ENV, pointer, message)


def test_key_file_options_belong_to_jwt_bearer_only():
    with pytest.raises(SpecCompileError) as caught:
        compile_auth("p", {"type": "api_key", "env": "ID", "key_file_env": "KEY"}, ENV)
    assert caught.value.pointer == "/api/auth/key_file_env"
    auth = compile_auth("p", RAW, ENV)
    assert auth.grant is not None and auth.dynamic and not auth.signs_in
    assert auth.grant.client({}) is None and auth.grant.client({"KEY": "/k.json"}) == ("/k.json", "")


def test_a_null_may_clear_an_inherited_field_but_not_a_required_one(tmp_path):
    tree = tmp_path / "specs"
    (tree / "providers.d").mkdir(parents=True)
    shutil.copy(ROOT / "providers.d" / "anthropic.yaml", tree / "providers.d")
    model = "models:\n  m: {context_window: 10, max_output_tokens: 5, capabilities: [], free: true, reason: t}\n"
    (tree / "providers.d" / "bad.yaml").write_text("extends: anthropic\ndescription: x\napi:\n  auth:\n    type: null\n" + model)
    catalog = load_catalog(tree, environ={})
    assert [p.message for p in catalog.problems if "bad.yaml" in str(p)] == ["missing required field 'type'; add it"]
    assert "vertex-anthropic" in load_catalog(ROOT, environ={}).providers
