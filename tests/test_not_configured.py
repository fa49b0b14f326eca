"""A deployment whose provider has no credentials is skipped (`not_configured`), never called
key-less: fallback goes on to the next candidate, a request with nothing configured gets a 503
naming the provider and the variables to set, the banner and /health say so, and a local provider
that nothing listens for is reported unreachable, not ready."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from engine import load_catalog
from engine.cli.commands import provider_banner
from engine.errors import AuthenticationFailed, GatewayError
from engine.pipeline.gateway import Gateway
from engine.pipeline.routing import activation
from engine.pipeline.upstream import Upstream
from engine.spec.provider import ProviderSpec

from .conftest import ROOT, audit_rows, free_port, provider_env, spec_tree, start_gateway

HELLO = [{"role": "user", "content": "Hello"}]
SONNET, FLASH = "anthropic/claude-sonnet-4-20250514", "gemini/gemini-2.5-flash"
ANTHROPIC_HINT = "anthropic is not configured: set ANTHROPIC_API_KEY or run `gaud-engine login anthropic`"
ALIASES = {
    "pair": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                            {"provider": "gemini", "model": "gemini-2.5-flash"}]},
    "nokeys": {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                              {"provider": "openai", "model": "gpt-4o"}]},
}
#: A provider needing two variables, one of them set: only the unset one is named, no value shown.
ACME = """\
extends: openai
description: test provider with two required variables
api:
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    ACME_KEY: {secret: true, required: true}
    ACME_ORG: {required: true}
    ACME_BASE_URL: {base_url: true}
  headers:
    Authorization: "Bearer {{ env.ACME_KEY }}"
    OpenAI-Organization: "{{ env.ACME_ORG }}"
models:
  acme-1: {context_window: 8000, max_output_tokens: 1000, capabilities: [], free: true, reason: test model}
"""


def keyless_env(base_url: str, *unset: str) -> dict[str, str]:
    return {k: v for k, v in provider_env(base_url).items() if k not in unset}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The shipped specs (retries off: each test queues the replies it needs) with the aliases above."""
    root = spec_tree(tmp_path, retry="false")
    routes = yaml.safe_load((root / "routes.yaml").read_text())
    routes["aliases"].update(ALIASES)
    (root / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    (root / "providers.d" / "acme.yaml").write_text(ACME)
    return root


class FakeCredentials:
    """The credential manager as the gateway sees it: a sign-in token, none, or a broken sign-in."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.failure: GatewayError | None = None

    async def access_token(self, spec: Any) -> str | None:
        if self.failure is not None:
            raise self.failure
        return self.token


def call(gateway: Gateway, body: dict[str, Any]) -> Any:
    """The completion result, or the GatewayError raised."""
    async def go() -> Any:
        try:
            return await gateway.chat(body)
        finally:
            await gateway.upstream.close()

    try:
        return asyncio.run(go())
    except GatewayError as error:
        return error


def in_process(tree: Path, environ: dict[str, str], **options: Any) -> Gateway:
    catalog = load_catalog(tree, environ=environ)
    catalog.raise_for_problems()

    async def no_sleep(_: float) -> None:
        return None

    return Gateway(catalog, Upstream(), sleep=no_sleep, rng=random.Random(1), **options)


# -- end to end: a served gateway, the openai SDK as client ---------------------------------------
def test_served_gateway_skips_keyless_deployments_and_says_so(upstream, tree, tmp_path):
    closed = free_port()  # nothing listens here: the "local Ollama" is not running
    env = {**keyless_env(upstream.url, "ANTHROPIC_API_KEY", "OPENAI_API_KEY"), "GAUD_SPECS_DIR": str(tree),
           "GAUD_AUTH_ENABLED": "false", "OLLAMA_BASE_URL": f"http://127.0.0.1:{closed}", "ACME_KEY": "acme-secret-9"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        banner = {line.split()[1]: line.split(None, 2)[2] for line in gw.logs().splitlines() if line.startswith("provider ")}
        assert banner["anthropic"] == "not configured (set ANTHROPIC_API_KEY or run `gaud-engine login anthropic`)"
        assert banner["openai"] == "not configured (set OPENAI_API_KEY)"
        assert banner["acme"] == "not configured (set ACME_ORG)"  # ACME_KEY is set: not named, never shown
        assert banner["ollama"] == f"unreachable at http://127.0.0.1:{closed}"
        assert banner["gemini"] == "ready"
        assert "acme-secret-9" not in gw.logs()

        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        upstream.reply_fixture("gemini", "generate_text.json")
        raw = client.chat.completions.with_raw_response.create(model="pair", messages=HELLO)
        assert raw.headers["x-gaud-deployment"] == FLASH and raw.headers["x-gaud-attempts"] == "1"
        assert raw.parse().choices[0].message.content
        assert [r.path for r in upstream.requests] == ["/v1beta/models/gemini-2.5-flash:generateContent"]

        upstream.clear()
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as refused:
                client.chat.completions.create(model="nokeys", messages=HELLO, stream=stream)
            assert refused.value.status_code == 503
            error = refused.value.response.json()["error"]
            assert error["code"] == "not_configured" and error["type"] == "server_error"
            assert error["message"] == f"{ANTHROPIC_HINT}; openai is not configured: set OPENAI_API_KEY"
        assert upstream.requests == []  # nobody was called without a key

        health = httpx.get(f"{gw.url}/health?detail=1").json()["providers"]
        assert health["anthropic"]["ready"] is False and health["anthropic"]["missing_env"] == ["ANTHROPIC_API_KEY"]
        assert health["ollama"] == {"ready": False, "missing_env": [], "unreachable": f"http://127.0.0.1:{closed}"}
        assert health["gemini"]["ready"] is True
    finally:
        gw.process.send_signal(signal.SIGTERM)  # flushes the audit log
        gw.process.wait(20)
    rows = audit_rows(tmp_path)
    assert [(r["alias"], r["status"], r["error_kind"], r["tried"], r["attempts"]) for r in rows] == [
        ("pair", 200, None, FLASH, 1),
        ("nokeys", 503, "not_configured", None, 0),
        ("nokeys", 503, "not_configured", None, 0),
    ]


# -- in process: the attempt loop -----------------------------------------------------------------
def test_a_skip_and_a_real_failure_make_all_failed_that_lists_the_skip(upstream, tree):
    gateway = in_process(tree, keyless_env(upstream.url, "ANTHROPIC_API_KEY"))
    upstream.reply_fixture("gemini", "error_503_unavailable.json")
    error = call(gateway, {"model": "pair", "messages": HELLO})
    assert error.kind == "all_failed"
    assert error.status == 503 and error.attempts == 1  # gemini's status and attempt; the skip is none
    assert f"{SONNET} (skipped: {ANTHROPIC_HINT})" in error.message
    assert [(f["deployment"], f["kind"], f["attempts"]) for f in error.failures] == [
        (SONNET, "not_configured", 0), (FLASH, "overloaded", 1)]
    assert len(upstream.requests) == 1


def test_a_single_unconfigured_deployment_is_a_503_naming_the_variable_not_its_value(upstream, tree):
    gateway = in_process(tree, {**keyless_env(upstream.url), "ACME_KEY": "acme-secret-9"})
    error = call(gateway, {"model": "acme/acme-1", "messages": HELLO})
    assert (error.status, error.kind, error.code) == (503, "not_configured", "not_configured")
    assert error.message == "acme is not configured: set ACME_ORG"
    assert "acme-secret-9" not in json.dumps(error.to_openai())
    assert upstream.requests == []
    assert "acme/acme-1" not in gateway.router.breakers.states()  # no breaker outcome either


def test_the_hot_path_reads_no_environment_and_a_reload_picks_up_a_new_key(upstream, tree, monkeypatch):
    gateway = in_process(tree, keyless_env(upstream.url, "ANTHROPIC_API_KEY"))

    def not_per_request(self: ProviderSpec) -> list[str]:
        raise AssertionError("missing_env() called per request: it is read once per catalog")

    with monkeypatch.context() as patched:
        patched.setattr(ProviderSpec, "missing_env", not_per_request)
        assert call(gateway, {"model": SONNET, "messages": HELLO}).message == ANTHROPIC_HINT
        upstream.reply_fixture("gemini", "generate_text.json")
        assert call(gateway, {"model": "pair", "messages": HELLO}).headers["x-gaud-deployment"] == FLASH

    gateway.reload(load_catalog(tree, environ=provider_env(upstream.url)))  # the key is set now
    upstream.clear()
    upstream.reply_fixture("anthropic", "messages_text.json")
    result = call(gateway, {"model": "pair", "messages": HELLO})
    assert result.headers["x-gaud-deployment"] == SONNET and result.headers["x-gaud-attempts"] == "1"
    assert upstream.last().headers["x-api-key"] == provider_env(upstream.url)["ANTHROPIC_API_KEY"]


def test_a_sign_in_makes_a_keyless_provider_configured(upstream, tree):
    credentials = FakeCredentials()
    gateway = in_process(tree, keyless_env(upstream.url, "ANTHROPIC_API_KEY"), credentials=credentials)
    assert call(gateway, {"model": SONNET, "messages": HELLO}).kind == "not_configured"

    credentials.token = "oauth-token-1"  # `gaud-engine login anthropic` happened
    upstream.reply_fixture("anthropic", "messages_text.json")
    result = call(gateway, {"model": "pair", "messages": HELLO})
    assert result.headers["x-gaud-deployment"] == SONNET
    assert upstream.last().headers["Authorization"] == "Bearer oauth-token-1"

    # Signed in but the sign-in no longer works: not "not configured" but the sign-in's own error.
    credentials.failure = AuthenticationFailed("The anthropic sign-in has expired: run `gaud-engine login anthropic`.")
    upstream.clear()
    error = call(gateway, {"model": SONNET, "messages": HELLO})
    assert error.kind == "authentication" and "gaud-engine login anthropic" in error.message
    assert upstream.requests == []


# -- default rules, banner ------------------------------------------------------------------------
def test_default_rules_fall_back_from_not_configured_and_retry_a_connection_failure_once():
    from engine.errors import NotConfigured, UpstreamConnection

    policy = load_catalog(ROOT, environ={}).route_table.default_policy  # routes.yaml as shipped
    skipped = activation({}, attempt=1, error=NotConfigured("x is not configured: set X"))
    assert policy.fallback.matches(skipped) and not policy.retry.matches(skipped)
    refused = [activation({}, attempt=n, error=UpstreamConnection("refused")) for n in (1, 2)]
    assert [policy.retry.matches(facts) for facts in refused] == [True, False]


def test_a_refused_local_provider_is_not_retried_for_seconds():
    """The shipped llama3.2 alias (Ollama native, then its /v1 endpoint) with no Ollama running:
    one retry each after ~1 s, not 3 each over 14 s."""
    closed = f"http://127.0.0.1:{free_port()}"
    catalog = load_catalog(ROOT, environ={"OLLAMA_BASE_URL": closed, "OLLAMA_OPENAI_BASE_URL": f"{closed}/v1"})
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    gateway = Gateway(catalog, Upstream(), sleep=sleep, rng=random.Random(1))
    error = call(gateway, {"model": "llama3.2", "messages": HELLO})
    assert error.kind == "all_failed" and error.attempts == 4
    assert {f["kind"] for f in error.failures} == {"connection"}
    assert len(sleeps) == 2 and all(0.8 <= s <= 1.2 for s in sleeps)


def test_the_banner_shows_signed_in_providers_ready(upstream, tree):
    environ = {**keyless_env(upstream.url, "ANTHROPIC_API_KEY", "COPILOT_API_TOKEN"),
               "OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    catalog = load_catalog(tree, environ=environ)
    lines = {line.split()[1]: line.split(None, 2)[2] for line in provider_banner(catalog, {"anthropic"})}
    assert lines["anthropic"] == "ready (signed in)"
    assert lines["copilot"] == "not configured (set COPILOT_API_TOKEN or run `gaud-engine login copilot`)"
    assert lines["gemini"] == "ready"  # on the fake upstream, which listens
    assert lines["ollama"].startswith("unreachable at http://127.0.0.1:")
