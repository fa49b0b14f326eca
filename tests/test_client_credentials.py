"""The OAuth 2.0 client credentials grant (`api.auth.type: client_credentials`, RFC 6749 section 4.4).

A fake token endpoint checks grant_type, the client's credentials (in the body, or HTTP Basic with
form-encoded id and secret) and the scope, and hands out tokens with `expires_in`. Checked here:
50 concurrent requests cause one token request; a token near expiry is replaced; an expired token
is never used; a refused grant is an `authentication` error that names no secret; unset client
variables leave the plain headers; the compiled spec refuses what makes no sense.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from aiohttp import web

from engine.credentials import compile_auth
from engine.errors import AuthenticationFailed, UpstreamConnection
from engine.spec.loader import load_catalog
from engine.spec.provider import EnvVar, SpecCompileError

from .credential_kit import FakeClock, assert_compile_error, manager
from .fakes import LoopbackServer
from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "client/id with:odd chars"
CLIENT_SECRET = "s3cret+value/with=odd:chars"
TENANT = "tenant-0001"
SCOPE = "https://api.acme.test/.default"



@dataclass
class TokenEndpoint:
    """Strict enough to catch a wrong grant, client authentication, scope or tenant path."""

    lifetime: float = 3600.0
    delay: float = 0.0
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = LoopbackServer()
        self.url = ""

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        basic = request.headers.get("Authorization", "")
        self.requests.append({"path": request.path, "form": form, "basic": basic})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:  # a careless server that echoes the secret back
            return web.json_response({"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"},
                                     status=self.status)
        if basic:
            user, _, password = base64.b64decode(basic.removeprefix("Basic ")).decode().partition(":")
            client = (unquote_plus(user), unquote_plus(password))
            if "client_secret" in form:
                return web.json_response({"error": "invalid_request", "error_description": "two methods"}, status=400)
        else:
            client = (form.get("client_id", ""), form.get("client_secret", ""))
        if client != (CLIENT_ID, CLIENT_SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = f"tok-{len(self.issued)}-{secrets.token_urlsafe(8)}"
        self.issued.append(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime})

    def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/{TENANT}/oauth2/v2.0/token", self.token)
        self.url = self._server.serve(app)

    def stop(self) -> None:
        if self.url:
            self._server.stop()
            self.url = ""


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    fake = TokenEndpoint()
    fake.start()
    yield fake
    fake.stop()


def spec_text(url: str, client_auth: str = "client_secret_post") -> str:
    return f"""\
extends: openai
description: client credentials test provider
api:
  base_url: https://api.acme.test/v1
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    ACME_API_KEY: {{secret: true, description: static key used while the client is not configured}}
    ACME_TENANT_ID: {{description: tenant}}
    ACME_CLIENT_ID: {{description: client id}}
    ACME_CLIENT_SECRET: {{secret: true, description: client secret}}
  headers:
    Authorization: null
    api-key: "{{{{ env.ACME_API_KEY }}}}"
  auth:
    type: client_credentials
    token_url: "{url}/{{{{ env.ACME_TENANT_ID }}}}/oauth2/v2.0/token"
    client_id_env: ACME_CLIENT_ID
    client_secret_env: ACME_CLIENT_SECRET
    client_auth: {client_auth}
    scopes: ["{SCOPE}"]
    refresh_before_seconds: 300
    headers:
      api-key: null
      Authorization: "Bearer {{{{ credentials.access_token }}}}"
models:
  m1: {{context_window: 100000, max_output_tokens: 1000, capabilities: [], free: true, reason: test model}}
"""


def load(tmp_path: Path, url: str, client_auth: str = "client_secret_post", **environ: str) -> Any:
    tree = tmp_path / "specs"
    (tree / "providers.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "providers.d" / "openai.yaml", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d", dirs_exist_ok=True)
    copy_models(tree)
    (tree / "providers.d" / "acme-cc.yaml").write_text(spec_text(url, client_auth))
    env = {"ACME_API_KEY": "static-key-0001", "ACME_TENANT_ID": TENANT, "ACME_CLIENT_ID": CLIENT_ID,
           "ACME_CLIENT_SECRET": CLIENT_SECRET, **environ}
    catalog = load_catalog(tree, environ={k: v for k, v in env.items() if v})
    catalog.raise_for_problems()
    return catalog.providers["acme-cc"]




@pytest.mark.parametrize("client_auth", ["client_secret_post", "client_secret_basic"])
def test_grant_sends_the_client_credentials_and_scope(tmp_path, store, endpoint, client_auth):
    spec = load(tmp_path, endpoint.url, client_auth)
    token = asyncio.run(manager(store, FakeClock()).access_token(spec))
    assert token == endpoint.issued[0]
    (seen,) = endpoint.requests
    assert seen["path"] == f"/{TENANT}/oauth2/v2.0/token"
    if client_auth == "client_secret_basic":
        assert seen["basic"].startswith("Basic ") and "client_secret" not in seen["form"]
    else:
        assert seen["basic"] == "" and seen["form"]["client_id"] == CLIENT_ID
    headers = spec.headers_for_token("m1", None, token)
    assert headers["Authorization"] == f"Bearer {token}" and "api-key" not in headers
    # Tokens stay in memory: nothing is written to the credential store.
    assert store.list_credentials() == []


def test_fifty_concurrent_requests_cause_one_token_request(tmp_path, store, endpoint):
    spec = load(tmp_path, endpoint.url)
    endpoint.delay = 0.2  # all fifty arrive while the first token request is in flight
    creds = manager(store, FakeClock())

    async def fifty() -> list[str | None]:
        return await asyncio.gather(*(creds.access_token(spec) for _ in range(50)))

    tokens = asyncio.run(fifty())
    assert len(endpoint.requests) == 1 and set(tokens) == {endpoint.issued[0]}


def test_token_cached_then_renewed_before_expiry(tmp_path, store, endpoint):
    spec = load(tmp_path, endpoint.url)
    clock = FakeClock()
    creds = manager(store, clock)

    async def scenario() -> None:
        first = await creds.access_token(spec)
        clock.now += 3600 - 300 - 1  # just before the renewal point (expiry - refresh_before_seconds)
        assert await creds.access_token(spec) == first and len(endpoint.requests) == 1
        clock.now += 2  # inside the renewal window: a new token, once
        second = await creds.access_token(spec)
        assert second != first and second == endpoint.issued[1]
        assert await creds.access_token(spec) == second and len(endpoint.requests) == 2

    asyncio.run(scenario())


def test_an_expired_token_is_never_used(tmp_path, store, endpoint):
    spec = load(tmp_path, endpoint.url)
    clock = FakeClock()
    creds = manager(store, clock)

    async def scenario() -> None:
        first = await creds.access_token(spec)
        endpoint.status = 503  # the token endpoint has a bad moment
        clock.now += 3600 - 200  # due for renewal, still valid: used a little longer
        assert await creds.access_token(spec) == first and len(endpoint.requests) == 2
        clock.now += 300  # expired, and no new one can be had: an error, never the stale token
        with pytest.raises(AuthenticationFailed):
            await creds.access_token(spec)
        endpoint.stop()  # and gone altogether: the connection error says so
        clock.now += 60
        with pytest.raises(UpstreamConnection):
            await creds.access_token(spec)

    asyncio.run(scenario())


def test_refused_grant_is_an_authentication_error_without_the_secret(tmp_path, store, endpoint, caplog):
    spec = load(tmp_path, endpoint.url)
    endpoint.status = 401
    clock = FakeClock()
    creds = manager(store, clock)
    with pytest.raises(AuthenticationFailed) as caught:
        asyncio.run(creds.access_token(spec))
    message = caught.value.message
    assert "invalid_client" in message and "ACME_CLIENT_SECRET" in message
    assert CLIENT_SECRET not in message and CLIENT_SECRET not in caplog.text
    # The refusal is remembered for a while rather than asked again per request.
    with pytest.raises(AuthenticationFailed):
        asyncio.run(creds.access_token(spec))
    assert len(endpoint.requests) == 1


def test_unset_client_variables_leave_the_plain_headers(tmp_path, store, endpoint):
    spec = load(tmp_path, endpoint.url, ACME_CLIENT_SECRET="")
    assert asyncio.run(manager(store, FakeClock()).access_token(spec)) is None
    assert endpoint.requests == []
    assert spec.headers_for("m1") == {"api-key": "static-key-0001"}


def test_an_upstream_refusal_gets_a_new_token(tmp_path, store, endpoint):
    spec = load(tmp_path, endpoint.url)
    creds = manager(store, FakeClock())

    async def scenario() -> None:
        first = await creds.access_token(spec)
        assert first is not None
        await creds.invalidate(spec, first)
        assert await creds.access_token(spec) == endpoint.issued[1]

    asyncio.run(scenario())


ENV = {"ID": EnvVar("ID"), "SECRET": EnvVar("SECRET", secret=True), "T": EnvVar("T")}
GRANT = {"type": "client_credentials", "token_url": "https://login.test/{{ env.T }}/token", "client_id_env": "ID",
         "client_secret_env": "SECRET", "headers": {"Authorization": "Bearer {{ credentials.access_token }}"}}


@pytest.mark.parametrize(("change", "pointer", "message"), [
    ({"client_secret_env": "NOPE"}, "/api/auth/client_secret_env", "does not declare"),
    ({"client_id": "abc"}, "/api/auth/client_id", "no effect with type client_credentials"),
    ({"token_url": "https://login.test/{{ env.TENANT }}/token"}, "/api/auth/token_url", "undeclared"),
    ({"exchange": {"url": "http://x", "headers": {"A": "{{ token }}"}}}, "/api/auth/exchange", "remove `exchange`"),
    ({"headers": None}, "/api/auth/headers", "say where the token goes"),
])
def test_compile_errors_name_the_field(change, pointer, message):
    assert_compile_error({**GRANT, **change}, ENV, pointer, message)


def test_client_auth_methods_outside_grants_are_refused():
    with pytest.raises(SpecCompileError) as caught:
        compile_auth("p", {"type": "api_key", "env": "ID", "client_auth": "client_secret_basic"}, ENV)
    assert caught.value.pointer == "/api/auth/client_auth"
    grant = compile_auth("p", GRANT, ENV)
    assert grant.dynamic and not grant.signs_in and grant.grant is not None
    assert grant.grant.url({"T": "t1"}) == "https://login.test/t1/token"
    assert grant.grant.client({"ID": "a"}) is None and grant.grant.client({"ID": "a", "SECRET": "b"}) == ("a", "b")
