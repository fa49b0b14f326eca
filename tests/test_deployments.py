"""Deployments with their own credentials (routes.yaml `env`), headers and display `name`: two
accounts of one provider behind one alias, each upstream seeing its own key; a deployment whose
variable is unset is skipped as `not_configured` while its sibling serves; each deployment has its
own breaker; `validate` checks rebindings; `routes explain` names variables, never values."""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner

from engine import load_catalog
from engine.cli.commands import main
from engine.pipeline.gateway import Gateway
from engine.pipeline.routing import Router, explain
from engine.pipeline.upstream import Upstream

from .conftest import audit_rows, provider_env, spec_tree, start_gateway
from .fakes import FakeUpstream
from .test_not_configured import call

HELLO = [{"role": "user", "content": "Hello"}]
MODEL = "claude-sonnet-4-20250514"
KEYS = {"KEY_TEAM_A": "sk-ant-team-a-secret-0101", "KEY_TEAM_B": "sk-ant-team-b-secret-0202"}


def deployment(name: str, base: str, variable: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "anthropic", "model": MODEL, "api_base": base,
            "env": {"ANTHROPIC_API_KEY": variable}, **extra}


@pytest.fixture(scope="module")
def second_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def upstreams(upstream: FakeUpstream, second_upstream: FakeUpstream) -> tuple[FakeUpstream, FakeUpstream]:
    second_upstream.clear()
    return upstream, second_upstream


def tree_with(tmp_path: Path, aliases: dict[str, Any], **defaults: Any) -> Path:
    root = spec_tree(tmp_path, **defaults)
    routes = yaml.safe_load((root / "routes.yaml").read_text())
    routes["aliases"].update(aliases)
    (root / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return root


def team_aliases(a: str, b: str) -> dict[str, Any]:
    team_a = deployment("team-a", a, "KEY_TEAM_A")
    team_b = deployment("team-b", b, "KEY_TEAM_B", headers={"X-Team": "b", "anthropic-version": "2023-06-01"})
    return {
        "teams-rr": {"strategy": "round-robin", "candidates": [team_a, team_b]},
        "teams-weighted": {"strategy": "weighted", "candidates": [{**team_a, "weight": 1}, {**team_b, "weight": 1}]},
        "teams-missing": {"candidates": [deployment("team-c", a, "KEY_TEAM_C"), team_b]},
        "team-c-only": {"candidates": [deployment("team-c", a, "KEY_TEAM_C")]},
    }


def without_anthropic_key(base: str) -> dict[str, str]:
    """The shipped providers' variables, without ANTHROPIC_API_KEY: the deployments need their own."""
    return {k: v for k, v in provider_env(base).items() if k != "ANTHROPIC_API_KEY"}


# -- end to end: a served gateway, the openai SDK as client ---------------------------------------
def test_two_accounts_of_one_provider_behind_one_alias(upstreams, tmp_path):
    a, b = upstreams
    tree = tree_with(tmp_path, team_aliases(a.url, b.url), retry="false")
    env = {**without_anthropic_key(a.url), **KEYS, "GAUD_SPECS_DIR": str(tree), "GAUD_AUTH_ENABLED": "false"}
    gw = start_gateway(env, tmp_path / "gw.log")
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=20)
        listed = {m.id for m in client.models.list()}  # ANTHROPIC_API_KEY is unset: the deployments' own keys count
        assert {"teams-rr", "teams-weighted", "teams-missing"} <= listed and "team-c-only" not in listed
        served = _round_robin_and_weighted(client, a, b)
        assert served["rr"] == ["team-a", "team-b", "team-a", "team-b"]
        assert set(served["weighted"]) == {"team-a", "team-b"}  # 1:1 over 24 requests: both (p of not ~1e-7)

        a.clear(), b.clear()
        b.reply_fixture("anthropic", "messages_text.json")
        raw = client.chat.completions.with_raw_response.create(model="teams-missing", messages=HELLO)
        assert raw.headers["x-gaud-deployment"] == "team-b"
        assert a.requests == [] and len(b.requests) == 1  # team-c (upstream a) was never called

        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="team-c-only", messages=HELLO)
        error = refused.value.response.json()["error"]
        assert (refused.value.status_code, error["code"]) == (503, "not_configured")
        assert error["message"] == "anthropic (deployment team-c) is not configured: set KEY_TEAM_C"
        assert a.requests == []
        logs = gw.logs_with("skipping team-c")
        assert "skipping team-c: anthropic (deployment team-c) is not configured: set KEY_TEAM_C" in logs
        assert not any(secret in logs for secret in KEYS.values())
    finally:
        gw.process.send_signal(signal.SIGTERM)  # flushes the audit log
        gw.process.wait(20)
    rows = audit_rows(tmp_path)
    assert [r["deployment"] for r in rows[:4]] == served["rr"]
    assert [(r["alias"], r["status"], r["error_kind"], r["deployment"], r["tried"]) for r in rows[-2:]] == [
        ("teams-missing", 200, None, "team-b", "team-b"),
        ("team-c-only", 503, "not_configured", None, None),
    ]
    assert not any(secret in json.dumps(rows, default=str) for secret in KEYS.values())


def _round_robin_and_weighted(client: openai.OpenAI, a: FakeUpstream, b: FakeUpstream) -> dict[str, list[str]]:
    """Which deployment served each request; every upstream request carried its own account's key."""
    served: dict[str, list[str]] = {}
    for alias, count in (("teams-rr", 4), ("teams-weighted", 24)):
        a.clear(), b.clear()
        for _ in range(count):  # enough replies on both, whichever the strategy picks
            a.reply_fixture("anthropic", "messages_text.json")
            b.reply_fixture("anthropic", "messages_text.json")
        names = []
        for _ in range(count):
            raw = client.chat.completions.with_raw_response.create(model=alias, messages=HELLO)
            assert raw.parse().choices[0].message.content
            names.append(raw.headers["x-gaud-deployment"])
        assert {r.headers["x-api-key"] for r in a.requests} <= {KEYS["KEY_TEAM_A"]}
        assert {r.headers["x-api-key"] for r in b.requests} <= {KEYS["KEY_TEAM_B"]}
        assert all(r.headers["X-Team"] == "b" for r in b.requests) and not any("X-Team" in r.headers for r in a.requests)
        assert all(r.path == "/v1/messages" for r in a.requests + b.requests)
        counted = Counter(names)
        assert (len(a.requests), len(b.requests)) == (counted["team-a"], counted["team-b"])
        served["rr" if alias == "teams-rr" else "weighted"] = names
    return served


# -- in process: breakers, hot path ----------------------------------------------------------------
def in_process(tree: Path, environ: dict[str, str]) -> Gateway:
    catalog = load_catalog(tree, environ=environ)
    catalog.raise_for_problems()

    async def no_sleep(_: float) -> None:
        return None

    return Gateway(catalog, Upstream(), sleep=no_sleep, rng=random.Random(1))


def test_a_failing_deployment_opens_its_own_breaker_not_its_siblings(upstreams, tmp_path):
    a, b = upstreams
    # Both unnamed: `provider/model@api_base[VAR]` tells them apart (and keys their breakers).
    aliases = {"pair": {"candidates": [
        {"provider": "anthropic", "model": MODEL, "api_base": a.url, "env": {"ANTHROPIC_API_KEY": "KEY_TEAM_A"}},
        {"provider": "anthropic", "model": MODEL, "api_base": b.url, "env": {"ANTHROPIC_API_KEY": "KEY_TEAM_B"}},
    ]}}
    tree = tree_with(tmp_path, aliases, retry="false", breaker={"failures": 1, "cooldown": 600})
    gateway = in_process(tree, {**without_anthropic_key(a.url), **KEYS})
    first, second = f"anthropic/{MODEL}@{a.url}[KEY_TEAM_A]", f"anthropic/{MODEL}@{b.url}[KEY_TEAM_B]"
    a.reply_fixture("anthropic", "error_529_overloaded.json")
    b.reply_fixture("anthropic", "messages_text.json")
    assert call(gateway, {"model": "pair", "messages": HELLO}).headers["x-gaud-deployment"] == second
    states = gateway.router.breakers.states()
    assert states[first]["state"] == "open" and states[second]["state"] == "closed"
    assert f"anthropic/{MODEL}" not in states

    a.clear(), b.clear()
    b.reply_fixture("anthropic", "messages_text.json")
    b.reply_fixture("anthropic", "messages_text.json")
    for _ in range(2):  # the open breaker skips the first; its sibling keeps serving
        assert call(gateway, {"model": "pair", "messages": HELLO}).headers["x-gaud-deployment"] == second
    assert a.requests == [] and [r.headers["x-api-key"] for r in b.requests] == [KEYS["KEY_TEAM_B"]] * 2


def test_rebound_values_are_read_at_load_and_redacted_like_the_declared_ones(tmp_path):
    tree = tree_with(tmp_path, team_aliases("http://127.0.0.1:9", "http://127.0.0.1:9"))
    catalog = load_catalog(tree, environ={**KEYS, "ANTHROPIC_API_KEY": "sk-ant-base-secret-0303"})
    catalog.raise_for_problems()
    router = Router(catalog)
    (team_a, team_b) = [p.target for p in router.plan({"model": "teams-rr", "messages": HELLO}).targets]
    assert team_a.provider.headers_for(MODEL)["x-api-key"] == KEYS["KEY_TEAM_A"]
    assert team_b.provider.headers_for(MODEL)["x-api-key"] == KEYS["KEY_TEAM_B"]
    assert catalog.providers["anthropic"].headers_for(MODEL)["x-api-key"] == "sk-ant-base-secret-0303"
    leaked = f"upstream said: bad key {KEYS['KEY_TEAM_B']}"
    assert team_b.provider.redact(leaked) == "upstream said: bad key [redacted]"
    # The same deployment in two aliases is one deployment: one spec, one breaker.
    again = router.plan({"model": "teams-missing", "messages": HELLO}).targets[1].target
    assert again.name == "team-b" and again.provider.headers_for(MODEL) == team_b.provider.headers_for(MODEL)


# -- validate -----------------------------------------------------------------------------------------
def validate(tree: Path) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(main, ["validate", str(tree), "--format", "json"])
    return result.exit_code, json.loads(result.output)


def test_validate_reports_a_rebinding_of_an_undeclared_variable_with_its_line(tmp_path):
    aliases = {"typo": {"candidates": [
        {"provider": "anthropic", "model": MODEL, "env": {"ANTHROPIC_APIKEY": "KEY_TEAM_A"}},
        {"provider": "openai", "model": "gpt-4o", "env": {"NOPE": "KEY_TEAM_B"}},
    ]}}
    code, problems = validate(tree_with(tmp_path, aliases))
    assert code == 1
    found = {p["pointer"]: p for p in problems}
    typo = found["/aliases/typo/candidates/0/env/ANTHROPIC_APIKEY"]
    assert "did you mean 'ANTHROPIC_API_KEY'?" in typo["message"] and typo["file"].endswith("routes.yaml") and typo["line"] > 1
    assert "it declares: OPENAI_API_KEY, OPENAI_BASE_URL" in found["/aliases/typo/candidates/1/env/NOPE"]["message"]


def test_validate_refuses_one_name_for_two_deployments_and_bad_headers(tmp_path):
    aliases = {
        "one": {"candidates": [deployment("shared", "http://a.example", "KEY_TEAM_A")]},
        "two": {"candidates": [deployment("shared", "http://b.example", "KEY_TEAM_A"),
                               {"provider": "openai", "model": "gpt-4o", "headers": {"X-Org": "{{ env.UNDECLARED }}"}},
                               {"provider": "openai", "model": "gpt-4o", "headers": {"X-Org": "{{ broken"}, "name": "o"}]},
        # The same deployment in two aliases is fine.
        "three": {"candidates": [deployment("shared", "http://a.example", "KEY_TEAM_A")]},
    }
    code, problems = validate(tree_with(tmp_path, aliases))
    assert code == 1
    by_pointer = {p["pointer"]: p["message"] for p in problems}
    assert set(by_pointer) == {"/aliases/two/candidates/0/name", "/aliases/two/candidates/1/headers/X-Org",
                               "/aliases/two/candidates/1/provider", "/aliases/two/candidates/2/headers/X-Org"}
    assert "already names a different deployment (alias 'one', candidate 1" in by_pointer["/aliases/two/candidates/0/name"]
    # Unnamed, its own headers are the only difference from the shipped alias' openai/gpt-4o: it needs a name.
    assert by_pointer["/aliases/two/candidates/1/provider"].startswith(
        "deployment name 'openai/gpt-4o' already names a different deployment (alias 'gpt-4o', candidate 1")
    assert "UNDECLARED" in by_pointer["/aliases/two/candidates/1/headers/X-Org"]
    assert "Jinja2 template error" in by_pointer["/aliases/two/candidates/2/headers/X-Org"]


def test_validate_accepts_the_documented_example(tmp_path):
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "routes.schema.json").read_text())
    example = schema["$defs"]["deployment"]["examples"][1]
    code, problems = validate(tree_with(tmp_path, {"example": {"candidates": [example]}}))
    assert (code, problems) == (0, [])


# -- routes explain -----------------------------------------------------------------------------------
#: A provider that carries its key in the URL path and reads a base URL variable.
PATHKEY = """\
extends: openai
description: test provider with its key in the URL
api:
  env:
    OPENAI_API_KEY: null
    OPENAI_BASE_URL: null
    PK_KEY: {secret: true, required: true}
    PK_BASE: {base_url: true}
  headers:
    Authorization: null
  endpoints:
    chat: {path: "/v1/{{ env.PK_KEY }}/chat/completions"}
models:
  pk-1: {context_window: 8000, max_output_tokens: 1000, capabilities: [], free: true, reason: test model}
"""


def test_explain_shows_names_urls_and_variables_never_values(tmp_path, monkeypatch):
    aliases = {"pk": {"candidates": [
        {"provider": "pathkey", "model": "pk-1", "name": "pk-team-b",
         "env": {"PK_KEY": "PK_KEY_TEAM_B", "PK_BASE": "PK_BASE_TEAM_B"}},
        {"provider": "pathkey", "model": "pk-1", "env": {"PK_KEY": "PK_KEY_TEAM_C"}},
        {"provider": "pathkey", "model": "pk-1"},
    ]}}
    tree = tree_with(tmp_path, aliases)
    (tree / "providers.d" / "pathkey.yaml").write_text(PATHKEY)
    secrets = {"PK_KEY": "pk-base-secret-1111", "PK_KEY_TEAM_B": "pk-team-b-secret-2222"}
    for name, value in {**secrets, "PK_BASE": "http://base.example", "PK_BASE_TEAM_B": "http://team-b.example"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PK_KEY_TEAM_C", raising=False)
    result = CliRunner().invoke(main, ["routes", "explain", "--specs", str(tree), '{"model": "pk", "messages": []}'])
    assert result.exit_code == 0, result.output
    assert not any(value in result.output for value in secrets.values())
    lines = result.output.splitlines()
    start = lines.index("candidates, in order:")
    assert lines[start + 1:start + 12] == [
        "  1. pk-team-b",
        "     pathkey/pk-1",
        "     url: http://team-b.example/v1/${PK_KEY_TEAM_B}/chat/completions",
        "     env: PK_KEY <- PK_KEY_TEAM_B (set), PK_BASE <- PK_BASE_TEAM_B (set)",
        "  2. pathkey/pk-1[PK_KEY_TEAM_C]",
        "     pathkey/pk-1",
        "     url: http://base.example/v1/${PK_KEY_TEAM_C}/chat/completions",
        "     env: PK_KEY <- PK_KEY_TEAM_C (unset, required), PK_BASE (set)",
        "  3. pathkey/pk-1",
        "     url: http://base.example/v1/${PK_KEY}/chat/completions",
        "     env: PK_KEY (set), PK_BASE (set)",
    ]
    assert "  pathkey/pk-1[PK_KEY_TEAM_C]: would be skipped, not configured (set PK_KEY_TEAM_C)" in lines


def test_explain_of_a_plan_uses_the_deployment_spec(tmp_path):
    tree = tree_with(tmp_path, team_aliases("http://a.example", "http://b.example"))
    catalog = load_catalog(tree, environ={"KEY_TEAM_A": KEYS["KEY_TEAM_A"]})
    catalog.raise_for_problems()
    text = explain(Router(catalog), {"model": "teams-missing", "messages": HELLO})
    assert "team-c: would be skipped, not configured (set KEY_TEAM_C)" in text
    assert "team-b: would be skipped, not configured (set KEY_TEAM_B)" in text
    assert "url: http://b.example/v1/messages" in text and KEYS["KEY_TEAM_A"] not in text
