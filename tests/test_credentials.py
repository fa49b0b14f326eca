"""Upstream credentials (`api.auth`): every flow driven by a fake OAuth/token server on 127.0.0.1.

- PKCE: the fake server checks S256(verifier) == challenge, the redirect URI and the state; the
  test plays the browser by following the authorize redirect to the local callback.
- Device code: authorization_pending, then slow_down (the poll interval grows by 5 s; the sleep is
  injected, so nothing waits), then tokens.
- Refresh and exchange on expiry (an injected clock), 20 concurrent callers -> one request,
  a revoked refresh token -> `authentication` telling the user to run `gaud-engine login`.
- The CLI (`login`, `status`, `logout`) through click's CliRunner against the same fakes.
- No token value used here appears in the logs, the CLI output or the database files.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import shutil
import stat
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from engine.accounts.store import Store
from engine.cli.commands import main
from engine.credentials import (
    CredentialManager,
    KeyringVault,
    VaultError,
    compile_auth,
    open_vault,
)
from engine.errors import AuthenticationFailed, UpstreamError
from engine.spec.loader import load_catalog
from engine.spec.provider import EnvVar, SpecCompileError

from .credential_kit import FakeClock
from .fakes import LoopbackServer
from .spec_trees import copy_models

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "test-client-0001"
ENV_TOKEN = "env-long-lived-token-0001"
API_KEY = "acme-static-api-key-0001"


# -- the fake authorization / token / exchange server ---------------------------------------------

@dataclass
class Seen:
    path: str
    grant: str | None
    form: dict[str, str]
    json_body: bool


@dataclass
class FakeAuthServer:
    """OAuth 2.0 (RFC 6749/7636/8628) and a token exchange, just strict enough to catch mistakes."""

    clock: FakeClock
    access_lifetime: float = 3600.0
    exchange_lifetime: float = 1800.0
    device_interval: float = 5.0
    device_script: list[str] = field(default_factory=list)
    delay: float = 0.0
    tamper_state: bool = False
    exchange_status: int = 200
    #: Every secret value that crossed this server (tokens, codes, verifiers): the leak test greps for them.
    secrets: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    pkce_checked: int = 0

    def __post_init__(self) -> None:
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.long_lived: set[str] = {ENV_TOKEN}
        self.devices: dict[str, list[str]] = {}
        self._server = LoopbackServer()
        self.url = ""

    # -- helpers
    def issue(self, kind: str) -> str:
        value = f"{kind}-{secrets.token_urlsafe(18)}"
        self.secrets.add(value)
        return value

    def count(self, path: str, grant: str | None = None) -> int:
        return sum(1 for s in self.seen if s.path == path and (grant is None or s.grant == grant))

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    def tokens(self) -> dict[str, Any]:
        access, refresh = self.issue("access"), self.issue("refresh")
        self.access_tokens.add(access)
        self.long_lived.add(access)
        self.refresh_tokens.add(refresh)
        return {"access_token": access, "refresh_token": refresh, "expires_in": self.access_lifetime,
                "token_type": "Bearer"}

    # -- handlers
    async def _params(self, request: web.Request) -> tuple[dict[str, str], bool]:
        if request.content_type == "application/json":
            return {k: str(v) for k, v in (await request.json()).items()}, True
        return {k: str(v) for k, v in (await request.post()).items()}, False

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        self.seen.append(Seen("/authorize", None, dict(q), False))
        ok = (q.get("response_type") == "code" and q.get("client_id") == CLIENT_ID
              and q.get("code_challenge_method") == "S256" and q.get("code_challenge") and q.get("state")
              and q.get("redirect_uri", "").startswith("http://") and q.get("scope") == "profile inference")
        if not ok:
            return web.json_response({"error": "invalid_request"}, status=400)
        code = self.issue("code")
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"], "state": q["state"]}
        state = "forged-state" if self.tamper_state else q["state"]
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': state})}")

    async def token(self, request: web.Request) -> web.Response:
        params, is_json = await self._params(request)
        grant = params.get("grant_type")
        self.seen.append(Seen("/token", grant, params, is_json))
        for key in ("code", "code_verifier", "refresh_token", "device_code"):
            if params.get(key):
                self.secrets.add(params[key])
        if self.delay:
            await asyncio.sleep(self.delay)
        if params.get("client_id") != CLIENT_ID:
            return web.json_response({"error": "invalid_client"}, status=401)
        if grant == "authorization_code":
            issued = self.codes.pop(params.get("code", ""), None)
            if issued is None or params.get("redirect_uri") != issued["redirect_uri"]:
                return web.json_response({"error": "invalid_grant", "error_description": "bad code"}, status=400)
            digest = hashlib.sha256(params.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != issued["challenge"]:
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE mismatch"}, status=400)
            if "state" in params and params["state"] != issued["state"]:
                return web.json_response({"error": "invalid_grant", "error_description": "state"}, status=400)
            self.pkce_checked += 1
            return web.json_response(self.tokens())
        if grant == "refresh_token":
            refresh = params.get("refresh_token", "")
            if refresh not in self.refresh_tokens:
                # Echoes the token back, as careless servers do: the client must redact it.
                return web.json_response(
                    {"error": "invalid_grant", "error_description": f"refresh token {refresh} was revoked"}, status=400
                )
            self.refresh_tokens.discard(refresh)  # rotation
            return web.json_response(self.tokens())
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            script = self.devices.get(params.get("device_code", ""))
            if script is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            step = script.pop(0) if script else "ok"
            if step == "authorization_pending":
                return web.json_response({"error": "authorization_pending"}, status=400)  # RFC 8628 style
            if step == "slow_down":
                return web.json_response({"error": "slow_down"})  # a 200 with an error, as some servers do
            if step == "access_denied":
                return web.json_response({"error": "access_denied"}, status=400)
            body = self.tokens()
            body.pop("refresh_token")
            body.pop("expires_in")  # a long-lived token that does not expire
            return web.json_response(body)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    async def device(self, request: web.Request) -> web.Response:
        params, is_json = await self._params(request)
        self.seen.append(Seen("/device/code", None, params, is_json))
        if params.get("client_id") != CLIENT_ID or params.get("scope") != "read:user":
            return web.json_response({"error": "invalid_client"}, status=400)
        device_code = self.issue("device")
        self.devices[device_code] = list(self.device_script)
        return web.json_response({
            "device_code": device_code, "user_code": "WDJB-MJHT", "verification_uri": f"{self.url}/activate",
            "expires_in": 900, "interval": self.device_interval,
        })

    async def exchange(self, request: web.Request) -> web.Response:
        self.seen.append(Seen("/exchange", None, {}, False))
        if self.delay:
            await asyncio.sleep(self.delay)
        header = request.headers.get("Authorization", "")
        if self.exchange_status != 200:
            return web.json_response({"message": f"refused {header}"}, status=self.exchange_status)
        if not header.startswith("token ") or header[6:] not in self.long_lived:
            return web.json_response({"message": "Bad credentials"}, status=401)
        short = self.issue("short")
        return web.json_response({"token": short, "expires_at": int(self.clock() + self.exchange_lifetime),
                                  "refresh_in": 1500})

    # -- lifecycle
    def start(self) -> str:
        app = web.Application()
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_post("/device/code", self.device)
        app.router.add_route("*", "/exchange", self.exchange)
        self.url = self._server.serve(app)
        return self.url

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeAuthServer]:
    fake = FakeAuthServer(clock)
    fake.start()
    yield fake
    fake.stop()


# -- a spec tree with test providers that point at the fake server --------------------------------
def provider_files(url: str, redirect_host: str = "127.0.0.1") -> dict[str, str]:
    model = "models:\n  m1: {context_window: 100000, max_output_tokens: 1000, capabilities: [tools], free: true, reason: test model}\n"
    base = """\
extends: openai
description: {description}
api:
  base_url: https://api.acme.test/v1
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    ACME_API_KEY: {{secret: true, description: static key used while not signed in}}
    ACME_LONG_TOKEN: {{secret: true, description: long-lived token to exchange}}
  headers:
    Authorization: null
    x-api-key: "{{{{ env.ACME_API_KEY }}}}"
    x-fixed: fixed
"""
    exchange = f"""\
    exchange:
      url: {url}/exchange
      headers: {{Authorization: "token {{{{ token }}}}"}}
      token_field: /token
      expires_at_field: /expires_at
      refresh_before_seconds: 60
"""
    return {
        "acme-pkce": base.format(description="PKCE test provider") + f"""\
  auth:
    type: oauth_pkce
    authorize_url: {url}/authorize
    token_url: {url}/token
    client_id: {CLIENT_ID}
    scopes: [profile, inference]
    redirect_host: {redirect_host}
    extra_authorize_params: {{code: "true"}}
    token_request: json
    token_request_state: true
    headers:
      x-api-key: null
      Authorization: "Bearer {{{{ credentials.access_token }}}}"
      x-beta: oauth
""" + model,
        "acme-device": base.format(description="device flow + exchange test provider") + f"""\
  auth:
    type: device_code
    device_authorization_url: {url}/device/code
    token_url: {url}/token
    client_id: {CLIENT_ID}
    scopes: ["read:user"]
{exchange}    headers:
      x-api-key: null
      Authorization: "Bearer {{{{ credentials.access_token }}}}"
""" + model,
        "acme-exchange": base.format(description="env token + exchange test provider") + f"""\
  auth:
    type: api_key
    env: ACME_LONG_TOKEN
    in: bearer
{exchange}""" + model,
        "acme-query": base.format(description="static key in the query") + """\
  auth: {type: api_key, env: ACME_API_KEY, in: query, name: key}
""" + model,
    }


def make_tree(root: Path, url: str, redirect_host: str = "127.0.0.1") -> Path:
    tree = root / "specs"
    shutil.copytree(ROOT / "providers.d", tree / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tree / "pricing.d")
    copy_models(tree)
    shutil.copy(ROOT / "routes.yaml", tree / "routes.yaml")
    for name, text in provider_files(url, redirect_host).items():
        (tree / "providers.d" / f"{name}.yaml").write_text(text)
    return tree


@pytest.fixture
def tree(tmp_path: Path, server: FakeAuthServer) -> Path:
    return make_tree(tmp_path, server.url)


@pytest.fixture
def catalog(tree: Path):  # type: ignore[no-untyped-def]
    loaded = load_catalog(tree, environ={"ACME_API_KEY": API_KEY, "ACME_LONG_TOKEN": ENV_TOKEN})
    loaded.raise_for_problems()
    return loaded



class Sleeps:
    """An injected sleep: records the waits, waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def manager_for(store: Store, clock: FakeClock, sleep: Sleeps | None = None, **kwargs: Any) -> CredentialManager:
    return CredentialManager(
        store, http=lambda: httpx.AsyncClient(timeout=10, trust_env=False), clock=clock,
        sleep=sleep or Sleeps(), environ={"GAUD_SECRET_KEY": "test-secret-key-0123456789abcdef"}, **kwargs,
    )


def play_browser(url: str) -> None:
    """The user's browser: open the authorization URL and follow the redirect to the local callback."""
    with httpx.Client(follow_redirects=True, trust_env=False, timeout=10) as client:
        reply = client.get(url)
    assert reply.url.path == "/callback"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def pkce_login(manager: CredentialManager, spec: Any) -> dict[str, Any]:
    lines: list[str] = []
    info = await manager.login(spec, echo=lines.append, open_url=play_browser, timeout=10)
    assert any("/authorize?" in line for line in lines)
    return info


# -- PKCE -------------------------------------------------------------------------------------------
def test_pkce_sign_in_checks_verifier_challenge_and_state(catalog, store, server, clock):
    spec = catalog.providers["acme-pkce"]
    manager = manager_for(store, clock)

    info = run(pkce_login(manager, spec))

    assert server.pkce_checked == 1  # the fake server recomputed S256(verifier) and found the challenge
    authorize = next(s for s in server.seen if s.path == "/authorize")
    assert authorize.form["code"] == "true" and authorize.form["redirect_uri"].startswith("http://127.0.0.1:")
    assert authorize.form["redirect_uri"].endswith("/callback")
    assert "code_verifier" not in authorize.form and len(authorize.form["state"]) >= 32
    token_request = next(s for s in server.seen if s.grant == "authorization_code")
    assert token_request.json_body and token_request.form["state"] == authorize.form["state"]
    assert 43 <= len(token_request.form["code_verifier"]) <= 128
    assert info["signed_in"] and info["refreshable"] and info["expires_at"] == clock.now + 3600

    token = run(manager.access_token(spec))
    assert token in server.access_tokens
    headers = spec.headers_for_token("m1", None, token)
    assert headers["Authorization"] == f"Bearer {token}" and headers["x-beta"] == "oauth"
    assert "x-api-key" not in headers and headers["x-fixed"] == "fixed"
    row = store.load_credentials("acme-pkce")
    assert row is not None and token not in row["blob"] and row["expires_at"] == clock.now + 3600


def test_pkce_state_mismatch_is_refused(catalog, store, server, clock):
    server.tamper_state = True
    with pytest.raises(AuthenticationFailed, match="state mismatch"):
        run(pkce_login(manager_for(store, clock), catalog.providers["acme-pkce"]))
    assert server.count("/token") == 0 and store.load_credentials("acme-pkce") is None


def test_pkce_times_out_without_a_reply(catalog, store, server, clock):
    manager = manager_for(store, clock)
    with pytest.raises(AuthenticationFailed, match="gaud-engine login acme-pkce"):
        run(manager.login(catalog.providers["acme-pkce"], echo=lambda _: None, open_url=None, timeout=0.2))


def test_not_signed_in_means_the_plain_headers(catalog, store, server, clock):
    spec = catalog.providers["acme-pkce"]
    assert run(manager_for(store, clock).access_token(spec)) is None
    assert spec.headers_for_token("m1", None, None) == spec.headers_for("m1") == {"x-api-key": API_KEY, "x-fixed": "fixed"}
    assert run(manager_for(store, clock).access_token(catalog.providers["openai"])) is None
    assert server.seen == []


def test_the_request_path_swaps_in_the_token(catalog, store, server, clock):
    """What the gateway does per attempt: build the request, then lay the token's headers over it."""
    from engine.pipeline.translate import build_request
    from engine.spec.models import resolve_model

    target = resolve_model(catalog, "acme-pkce/m1")[0]
    manager = manager_for(store, clock)
    body = {"model": "acme-pkce/m1", "messages": [{"role": "user", "content": "hi"}]}
    request = build_request(target, body, stream=False)
    assert run(manager.access_token(target.provider)) is None and request.headers["x-api-key"] == API_KEY
    run(pkce_login(manager, target.provider))
    token = run(manager.access_token(target.provider))
    request.headers = target.provider.headers_for_token(target.model, target.api_base, token)
    assert request.headers == {"x-fixed": "fixed", "Authorization": f"Bearer {token}", "x-beta": "oauth"}


# -- device code ----------------------------------------------------------------------------------
def test_device_flow_pending_then_slow_down_then_tokens(catalog, store, server, clock):
    server.device_script = ["authorization_pending", "slow_down", "ok"]
    spec = catalog.providers["acme-device"]
    sleeps = Sleeps()
    lines: list[str] = []

    info = run(manager_for(store, clock, sleeps).login(spec, echo=lines.append, open_url=None))

    assert sleeps.calls == [5.0, 5.0, 10.0]  # the interval grew by 5 s after slow_down
    assert server.count("/token") == 3 and server.count("/exchange") == 1
    assert any("WDJB-MJHT" in line and "/activate" in line for line in lines)
    assert info["signed_in"] and info["expires_at"] is None and info["exchange"]
    token = run(manager_for(store, clock).access_token(spec))  # a fresh process reuses the stored exchange
    assert token is not None and token.startswith("short-") and server.count("/exchange") == 1
    assert spec.headers_for_token("m1", None, token)["Authorization"] == f"Bearer {token}"


def test_device_flow_declined(catalog, store, server, clock):
    server.device_script = ["access_denied"]
    with pytest.raises(AuthenticationFailed, match="declined"):
        run(manager_for(store, clock).login(catalog.providers["acme-device"], echo=lambda _: None))
    assert store.load_credentials("acme-device") is None


# -- refresh and exchange on expiry ---------------------------------------------------------------
def test_refresh_on_expiry(catalog, store, server, clock):
    spec = catalog.providers["acme-pkce"]
    manager = manager_for(store, clock)
    run(pkce_login(manager, spec))
    first = run(manager.access_token(spec))
    blob = store.load_credentials("acme-pkce")["blob"]

    clock.now += 3600 - 30  # inside the 60 s refresh margin
    second = run(manager.access_token(spec))

    assert second != first and second in server.access_tokens
    assert server.count("/token", "refresh_token") == 1
    row = store.load_credentials("acme-pkce")
    assert row["blob"] != blob and row["expires_at"] == clock.now + 3600
    # Another process picks up the refreshed tokens instead of spending the rotated refresh token.
    assert run(manager_for(store, clock).access_token(spec)) == second
    assert server.count("/token", "refresh_token") == 1


def test_exchange_again_on_expiry(catalog, store, server, clock):
    spec = catalog.providers["acme-device"]
    manager = manager_for(store, clock)
    run(manager.login(spec, echo=lambda _: None))
    first = run(manager.access_token(spec))
    clock.now += 1800 - 59
    second = run(manager.access_token(spec))
    assert second != first and server.count("/exchange") == 2


def test_twenty_concurrent_requests_refresh_once(catalog, store, server, clock):
    spec = catalog.providers["acme-pkce"]
    manager = manager_for(store, clock)
    run(pkce_login(manager, spec))
    run(manager.access_token(spec))
    clock.now += 7200
    server.delay = 0.2  # the refresh is in flight while the other 19 arrive

    async def burst() -> list[str | None]:
        return await asyncio.gather(*(manager.access_token(spec) for _ in range(20)))

    tokens = run(burst())
    assert server.count("/token", "refresh_token") == 1
    assert len(set(tokens)) == 1 and tokens[0] in server.access_tokens


def test_twenty_concurrent_requests_exchange_once(catalog, store, server, clock):
    spec = catalog.providers["acme-device"]
    manager = manager_for(store, clock)
    run(manager.login(spec, echo=lambda _: None))
    clock.now += 3600
    server.delay = 0.2

    async def burst() -> list[str | None]:
        return await asyncio.gather(*(manager.access_token(spec) for _ in range(20)))

    tokens = run(burst())
    assert server.count("/exchange") == 2 and len(set(tokens)) == 1


def test_revoked_refresh_token_asks_for_login(catalog, store, server, clock):
    spec = catalog.providers["acme-pkce"]
    manager = manager_for(store, clock)
    run(pkce_login(manager, spec))
    refresh_tokens = set(server.refresh_tokens)
    server.revoke_refresh_tokens()
    clock.now += 7200

    with pytest.raises(AuthenticationFailed) as caught:
        run(manager.access_token(spec))
    error = caught.value
    assert error.kind == "authentication" and error.status == 401
    assert "run `gaud-engine login acme-pkce`" in error.message
    assert "[redacted]" in error.message and not any(t in error.message for t in refresh_tokens)
    # Asked again: the same answer, without hammering the token server.
    with pytest.raises(AuthenticationFailed, match="gaud-engine login acme-pkce"):
        run(manager.access_token(spec))
    assert server.count("/token", "refresh_token") == 1
    # A new sign-in (another process, say) is picked up.
    run(pkce_login(manager_for(store, clock), spec))
    clock.now += 31
    assert run(manager.access_token(spec)) in server.access_tokens


def test_refused_upstream_token_is_exchanged_again(catalog, store, server, clock):
    spec = catalog.providers["acme-device"]
    manager = manager_for(store, clock)
    run(manager.login(spec, echo=lambda _: None))
    token = run(manager.access_token(spec))
    run(manager.invalidate(spec, token))
    assert run(manager.access_token(spec)) != token and server.count("/exchange") == 2


def test_token_server_down_keeps_the_valid_token(catalog, store, server, clock):
    spec = catalog.providers["acme-device"]
    manager = manager_for(store, clock)
    run(manager.login(spec, echo=lambda _: None))
    token = run(manager.access_token(spec))
    clock.now += 1800 - 30  # due for renewal, not yet expired
    server.exchange_status = 503
    assert run(manager.access_token(spec)) == token
    clock.now += 60  # now expired: the failure shows
    with pytest.raises(UpstreamError):
        run(manager.access_token(spec))


# -- a long-lived token from the environment, exchanged ----------------------------------------------
def test_env_token_exchanged_and_refused(catalog, store, server, clock, tree):
    spec = catalog.providers["acme-exchange"]
    token = run(manager_for(store, clock).access_token(spec))
    assert token is not None and token.startswith("short-")
    assert spec.headers_for_token("m1", None, token)["Authorization"] == f"Bearer {token}"
    server.exchange_status = 401
    clock.now += 3600
    with pytest.raises(AuthenticationFailed, match="check ACME_LONG_TOKEN") as caught:
        run(manager_for(store, clock).access_token(spec))
    assert ENV_TOKEN not in caught.value.message  # the server echoed the header: redacted
    unset = load_catalog(tree, environ={})
    assert run(manager_for(store, clock).access_token(unset.providers["acme-exchange"])) is None


def test_static_api_key_placements(catalog):
    query = catalog.providers["acme-query"]
    assert query.url("chat", "m1", stream=False) == f"https://api.acme.test/v1/chat/completions?key={API_KEY}"
    assert "key" not in query.headers_for("m1")
    env = {"K": EnvVar("K", secret=True)}
    bearer = compile_auth("p", {"type": "api_key", "env": "K", "in": "bearer"}, env)
    header = compile_auth("p", {"type": "api_key", "env": "K", "in": "header", "name": "x-key"}, env)
    assert bearer.static_headers["Authorization"].render(env={"K": "abc"}) == "Bearer abc"
    assert header.static_headers["x-key"].render(env={"K": "abc"}) == "abc"
    assert not bearer.dynamic and not header.signs_in


@pytest.mark.parametrize(("raw", "pointer", "message"), [
    ({"type": "api_key", "env": "NOPE"}, "/api/auth/env", "does not declare"),
    ({"type": "api_key", "env": "K", "in": "header"}, "/api/auth/name", "needs `name`"),
    ({"type": "api_key", "env": "K", "headers": {"A": "b"}}, "/api/auth/headers", "static key"),
    ({"type": "device_code", "device_authorization_url": "http://x", "token_url": "http://x", "client_id": "c",
      "authorize_url": "http://x", "headers": {"A": "{{ credentials.access_token }}"}},
     "/api/auth/authorize_url", "no effect with type device_code"),
    ({"type": "oauth_pkce", "authorize_url": "http://x", "token_url": "http://x", "client_id": "c",
      "headers": {"A": "{{ credentials.refresh_token }}"}}, "/api/auth/headers/A", "undeclared"),
    ({"type": "api_key", "env": "K", "exchange": {"url": "http://x", "headers": {"A": "{{ tokn }}"}}},
     "/api/auth/exchange/headers/A", "undeclared"),
])
def test_compile_errors_name_the_field(raw, pointer, message):
    with pytest.raises(SpecCompileError) as caught:
        compile_auth("p", raw, {"K": EnvVar("K")})
    assert caught.value.pointer == pointer and message in caught.value.message


# -- the shipped specs ------------------------------------------------------------------------------
def test_shipped_specs_keep_env_keys_and_add_sign_in():
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "COPILOT_API_TOKEN": "copilot-test", "GEMINI_API_KEY": "g"}
    shipped = load_catalog(ROOT, environ=env)
    anthropic, copilot = shipped.providers["anthropic"], shipped.providers["copilot"]
    # Not signed in: exactly the env-key headers as before.
    assert anthropic.headers_for("m") == {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    assert copilot.headers_for("m")["Authorization"] == "Bearer copilot-test"
    assert anthropic.missing_env() == [] and copilot.missing_env() == []
    # Signed in: the OAuth / exchanged token instead.
    signed = anthropic.headers_for_token("m", None, "oauth-tok")
    assert signed == {"anthropic-version": "2023-06-01", "Authorization": "Bearer oauth-tok",
                      "anthropic-beta": "oauth-2025-04-20"}
    copilot_signed = copilot.headers_for_token("m", None, "short-tok")
    assert copilot_signed["Authorization"] == "Bearer short-tok" and copilot_signed["Copilot-Integration-Id"] == "vscode-chat"
    assert anthropic.auth.type == "oauth_pkce" and anthropic.auth.client_id == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    assert anthropic.auth.scope == "org:create_api_key user:profile user:inference"
    assert copilot.auth.type == "device_code" and copilot.auth.client_id == "Iv1.b507a08c87ecfe98"
    assert copilot.auth.exchange.url == "https://api.github.com/copilot_internal/v2/token"
    assert copilot.auth.exchange.render_headers("gh-tok", {})["Authorization"] == "token gh-tok"
    assert shipped.providers["gemini"].auth is None


def test_auth_schema_documents_every_field():
    schema = json.loads((ROOT / "schemas" / "provider.schema.json").read_text())
    undocumented = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and not (sub.get("description") and sub.get("examples")):
                    undocumented.append(f"{path}/{name}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    for name in ("auth", "auth_exchange", "auth_fields"):
        walk(schema["$defs"][name], f"/$defs/{name}")
    assert undocumented == []
    api_auth = schema["properties"]["api"]["properties"]["auth"]
    assert api_auth["description"] and api_auth["examples"]


# -- storage --------------------------------------------------------------------------------------
def test_key_file_is_created_0600_next_to_the_database(tmp_path):
    db = tmp_path / "data" / "gaud.db"
    db.parent.mkdir()
    vault = open_vault(f"sqlite:///{db}", environ={})
    blob = vault.seal("acme", {"access_token": "tok-123456"})
    key_file = db.parent / "gaud-secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "tok-123456" not in blob and vault.open("acme", blob) == {"access_token": "tok-123456"}
    with pytest.raises(VaultError, match="do not open"):
        vault.open("other", blob)  # a blob copied onto another provider's row
    with pytest.raises(VaultError, match="gaud-engine login acme"):
        open_vault(f"sqlite:///{db}", environ={"GAUD_SECRET_KEY": "another-key-0123456789"}).open("acme", blob)
    # Rotation: the new key first, the old one still opens.
    old = key_file.read_text().strip()
    rotated = open_vault("postgresql://x/y", environ={"GAUD_SECRET_KEY": f"new-key-0123456789abcdef,{old}"})
    assert rotated.open("acme", blob) == {"access_token": "tok-123456"}
    key_file.chmod(0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        open_vault(f"sqlite:///{db}", environ={}).seal("acme", {})
    with pytest.raises(VaultError, match="GAUD_SECRET_KEY"):
        open_vault("postgresql://x/y", environ={}).seal("acme", {})


def test_keyring_backend(monkeypatch, store, catalog, server, clock):
    stored: dict[tuple[str, str], str] = {}
    fake = types.SimpleNamespace(
        set_password=lambda s, u, p: stored.__setitem__((s, u), p),
        get_password=lambda s, u: stored.get((s, u)),
        delete_password=lambda s, u: stored.pop((s, u)),
    )
    monkeypatch.setitem(sys.modules, "keyring", fake)
    vault = open_vault(store.url, environ={"GAUD_CREDENTIALS_BACKEND": "keyring"})
    assert isinstance(vault, KeyringVault)
    manager = CredentialManager(store, vault=vault, http=lambda: httpx.AsyncClient(trust_env=False), clock=clock)
    spec = catalog.providers["acme-pkce"]
    run(pkce_login(manager, spec))
    assert store.load_credentials("acme-pkce")["blob"] == "keyring:v1"
    assert json.loads(stored[("gaud-engine", "acme-pkce")])["refresh_token"] in server.secrets
    assert run(manager.logout(spec)) and stored == {}


# -- the CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"GAUD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "GAUD_SPECS_DIR": str(tree)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_device_login_status_logout(cli_env, server, tmp_path):
    server.device_interval = 0.01
    server.device_script = ["authorization_pending"]
    status = cli("status")
    assert status.exit_code == 0
    assert [line.split()[:3] for line in status.output.splitlines() if line.startswith("acme-")] == [
        ["acme-device", "device_code", "no"], ["acme-exchange", "api_key", "-"],
        ["acme-pkce", "oauth_pkce", "no"], ["acme-query", "api_key", "-"],
    ]

    login = cli("login", "acme-device", "--no-browser")
    assert login.exit_code == 0, login.output
    assert "enter the code WDJB-MJHT" in login.output and "Signed in to acme-device" in login.output
    assert stat.S_IMODE((tmp_path / "gaud-secret.key").stat().st_mode) == 0o600

    status = cli("status")
    row = next(line for line in status.output.splitlines() if line.startswith("acme-device"))
    assert row.split()[2] == "yes" and "never (short-lived tokens exchanged as needed)" in row

    assert "Signed out of acme-device." in cli("logout", "acme-device").output
    assert "nothing to do" in cli("logout", "acme-device").output
    row = next(line for line in cli("status").output.splitlines() if line.startswith("acme-device"))
    assert row.split()[2] == "no"


def test_cli_browser_login(cli_env, server, monkeypatch, tmp_path):
    import webbrowser

    tree = make_tree(tmp_path / "localhost", server.url, redirect_host="localhost")
    monkeypatch.setenv("GAUD_SPECS_DIR", str(tree))
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: (opened.append(url), play_browser(url)))
    login = cli("login", "acme-pkce")
    assert login.exit_code == 0, login.output
    assert "redirect_uri=http%3A%2F%2Flocalhost%3A" in opened[0] and server.pkce_checked == 1
    row = next(line for line in cli("status").output.splitlines() if line.startswith("acme-pkce"))
    assert row.split()[2] == "yes" and "(refreshed automatically)" in row


def test_cli_login_refuses_what_has_no_sign_in(cli_env):
    result = CliRunner().invoke(main, ["login", "acme-query"])
    assert result.exit_code == 1 and "has no sign-in flow: it uses an API key from ACME_API_KEY" in result.output
    result = CliRunner().invoke(main, ["login", "nope"])
    assert result.exit_code == 1 and "nope is not a provider" in result.output


# -- no token in clear, anywhere ------------------------------------------------------------------
def test_no_token_in_logs_output_or_database(tmp_path, server, clock, caplog, monkeypatch):
    """Every flow, with DEBUG logging to caplog and a log file; then grep for every token value."""
    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "gaud.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    outputs: list[str] = []
    try:
        tree = make_tree(tmp_path, server.url)
        catalog = load_catalog(tree, environ={"ACME_API_KEY": API_KEY, "ACME_LONG_TOKEN": ENV_TOKEN})
        db = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
        db.migrate()
        manager = CredentialManager(db, http=lambda: httpx.AsyncClient(trust_env=False), clock=clock, sleep=Sleeps())
        pkce, device, exchange = (catalog.providers[n] for n in ("acme-pkce", "acme-device", "acme-exchange"))
        server.device_script = ["authorization_pending", "slow_down"]

        async def flows() -> None:
            await manager.login(pkce, echo=outputs.append, open_url=play_browser, timeout=10)
            await manager.login(device, echo=outputs.append)
            for spec in (pkce, device, exchange):
                await manager.access_token(spec)
            clock.now += 7200
            server.delay = 0.05
            await asyncio.gather(*(manager.access_token(s) for s in (pkce, device, exchange) for _ in range(5)))
            server.delay = 0
            server.revoke_refresh_tokens()
            clock.now += 7200
            with pytest.raises(AuthenticationFailed) as caught:
                await manager.access_token(pkce)
            outputs.append(caught.value.message)
            outputs.append(repr(manager._entries))

        run(flows())
        monkeypatch.setenv("GAUD_DATABASE_URL", f"sqlite:///{tmp_path / 'gaud.db'}")
        monkeypatch.setenv("GAUD_SPECS_DIR", str(tree))
        outputs.append(cli("status").output)
        blobs = [db.load_credentials(name)["blob"] for name in ("acme-pkce", "acme-device")]
        db.close()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()

    # Authorization codes are left out: they travel in the browser's address bar by design (and the
    # test's stand-in browser, an httpx client, logs the URLs it visits).
    values = {v for v in server.secrets | {ENV_TOKEN, API_KEY} if not v.startswith("code-")}
    assert len([v for v in values if v.startswith("short-")]) >= 3 and any(v.startswith("refresh-") for v in values)
    assert any(r.name == "gaud.credentials" for r in caplog.records)  # there is something to grep
    haystacks = {"caplog": caplog.text, "log file": log_file.read_text(), "output": "\n".join(outputs)}
    for path in tmp_path.iterdir():
        if path.is_file() and path.name.startswith("gaud.db"):
            haystacks[path.name] = path.read_bytes().decode("latin-1")
    database = "".join(text for where, text in haystacks.items() if where.startswith("gaud.db"))
    assert all(blob in database for blob in blobs)  # the sealed records are there, so is what we grep
    leaks = [(where, value) for where, text in haystacks.items() for value in values if value in text]
    assert leaks == []
