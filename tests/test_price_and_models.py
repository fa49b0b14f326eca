"""`gaud-engine price` for aliases, free and unpriced models (run as the CLI is), and
`GET /v1/models/{id}` through the openai SDK's `models.retrieve` against a running gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import pytest
import yaml
from openai.types import Model

from engine.accounts.store import Store

from .conftest import ROOT, RunningGateway, provider_env, spec_tree, start_gateway

HINT = "run `gaud-engine catalog import <litellm price file>` or add it by hand (see docs/catalog.md)"


def run_price(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GAUD_")}
    return subprocess.run([sys.executable, "-m", "engine", "price", *args], check=False,
                          capture_output=True, text=True,
                          cwd=ROOT, env={**environ, **(env or {})}, timeout=60)


def rows(output: str) -> dict[str, list[str]]:
    """Deployment rows of the table by name (tier lines are indented and skipped)."""
    lines = output.splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith("deployment "))
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1:] if not line.startswith(" ")}


@pytest.fixture(scope="module")
def unpriced_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped tree with Claude Opus 4's price removed and an alias mixing it with Sonnet 4."""
    tree = spec_tree(tmp_path_factory.mktemp("unpriced"))
    prices = yaml.safe_load((tree / "pricing.d" / "anthropic.yaml").read_text())
    del prices["models"]["claude-opus-4-20250514"]
    (tree / "pricing.d" / "anthropic.yaml").write_text(yaml.safe_dump(prices, sort_keys=False))
    routes = yaml.safe_load((tree / "routes.yaml").read_text())
    routes["aliases"]["mixed"] = {"candidates": [{"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
                                                 {"provider": "anthropic", "model": "claude-opus-4-20250514"}]}
    (tree / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return tree


# -- price ---------------------------------------------------------------------------------------
def test_price_of_an_alias_lists_every_candidate_with_tiers_and_cost():
    result = run_price("smart", "--input", "20000", "--output", "500", "--cached", "18000")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "smart: 2 candidates, strategy priority"
    assert lines[1].split() == ["deployment", "input", "output", "cached", "cache", "write", "cost"]
    table = rows(result.stdout)
    # Sonnet 4: 2_000*3 + 18_000*0.3 + 500*15 = 18_900 millionths.
    assert table["anthropic/claude-sonnet-4-20250514"] == ["3.00", "15.00", "0.30", "3.75", "$0.018900"]
    # Gemini 2.5 Pro: 2_000*1.25 + 18_000*0.125 + 500*10 = 2_500 + 2_250 + 5_000 = 9_750 millionths.
    assert table["gemini/gemini-2.5-pro"] == ["1.25", "10.00", "0.125", "1.25", "$0.009750"]
    # Each candidate's long-context tier sits under it, and every column is aligned.
    assert lines[3].split() == ["prompts", "over", "200000", "tokens", "6.00", "22.50", "0.60", "7.50"]
    assert lines[5].split() == ["prompts", "over", "200000", "tokens", "2.50", "15.00", "0.25", "2.50"]
    assert len({line.index("$") for line in lines if "$" in line}) == 1
    assert len({len(line) for line in lines[1:] if not line.startswith(" ")}) == 1
    assert len(lines[3]) == len(lines[5]) == lines[1].index("cache write") + len("cache write")


def test_price_without_token_counts_shows_prices_only():
    result = run_price("fast")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == ["deployment", "input", "output", "cached", "cache", "write"]
    assert "$" not in result.stdout
    assert set(rows(result.stdout)) == {"gemini/gemini-2.0-flash", "anthropic/claude-3-5-haiku-20241022"}
    assert result.stdout.startswith("fast: 2 candidates, strategy lowest-cost\n")


def test_price_of_a_free_model_says_why():
    result = run_price("gpt-oss:20b", "--input", "1000", "--output", "10")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert set(table) == {"ollama/gpt-oss:20b", "ollama-openai/gpt-oss:20b"}
    for cells in table.values():
        assert cells[:5] == ["0.00", "0.00", "0.00", "0.00", "$0.000000"]
        assert " ".join(cells[5:]) == "free: runs on your own Ollama server, no per-token charge"


def test_price_of_an_unpriced_model_exits_1_with_the_hint(unpriced_tree):
    result = run_price("claude-opus-4", "--specs", str(unpriced_tree))
    assert result.returncode == 1
    assert result.stderr == f"Error: no price for anthropic/claude-opus-4-20250514 in pricing.d/; {HINT}\n"
    assert "deployment" not in result.stdout  # nothing priced: no table
    # In an alias, the priced candidates are still shown; the unpriced one is marked and fails the command.
    mixed = run_price("mixed", "--input", "1000", "--output", "100", "--specs", str(unpriced_tree))
    assert mixed.returncode == 1
    table = rows(mixed.stdout)
    assert table["anthropic/claude-sonnet-4-20250514"][-1] == "$0.004500"  # 1_000*3 + 100*15
    assert table["anthropic/claude-opus-4-20250514"] == ["-", "-", "-", "-", "-", "no", "price", "in", "pricing.d/"]
    assert "no price for anthropic/claude-opus-4-20250514 in pricing.d/" in mixed.stderr


def test_price_of_an_unlisted_model_is_estimated_only_when_the_gateway_would_serve_it():
    refused = run_price("openai/gpt-unreleased", "--input", "1000", "--output", "10")
    assert refused.returncode == 1 and "is not listed by this gateway" in refused.stderr
    served = run_price("openai/gpt-unreleased", "--input", "1000", "--output", "10",
                       env={"GAUD_ROUTING_ALLOW_UNLISTED_MODELS": "true"})
    assert served.returncode == 0, served.stderr
    assert " ".join(rows(served.stdout)["openai/gpt-unreleased"][5:]) == "estimated: openai's highest prices"


def test_price_of_an_unknown_model():
    result = run_price("no-such-model")
    assert result.returncode == 1 and "does not exist" in result.stderr and result.stdout == ""


# -- GET /v1/models/{id} -------------------------------------------------------------------------
def listed(client: openai.OpenAI) -> dict[str, dict[str, object]]:
    return {model.id: model.model_dump() for model in client.models.list()}


@pytest.mark.parametrize("model_id", ["smart", "gpt-4o", "anthropic/claude-sonnet-4-20250514", "gpt-oss:20b",
                                      "ollama/gpt-oss:20b", "gemini/gemini-2.5-flash"])
def test_retrieve_gives_the_list_entry(client, gateway, model_id):
    entry = client.models.retrieve(model_id)
    assert entry.model_dump() == listed(client)[model_id]
    assert entry.id == model_id and entry.object == "model"
    raw = httpx.get(f"{gateway.url}/v1/models/{quote(model_id, safe='')}").json()
    assert set(raw) == {"id", "object", "created", "owned_by"}  # OpenAI's Model, nothing more
    Model.model_validate(raw, strict=True)


def test_retrieve_resolves_names_the_chat_route_accepts(client):
    """A bare model id one spec lists is served by name, so it is found by name too."""
    entry = client.models.retrieve("claude-sonnet-4-20250514")
    assert (entry.id, entry.owned_by) == ("claude-sonnet-4-20250514", "anthropic")


@pytest.mark.parametrize("model_id", ["no-such-model", "anthropic/no-such-model", "nobody/gpt-4o", "smart/extra"])
def test_retrieve_of_an_unknown_id_is_an_openai_404(client, gateway, model_id):
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(model_id)
    body = missing.value.body
    assert missing.value.status_code == 404
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", "model", "model_not_found")
    assert model_id in body["message"]
    raw = httpx.get(f"{gateway.url}/v1/models/{model_id}")
    assert set(raw.json()) == {"error"} and set(raw.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def keyed(fake_upstream_server, tmp_path_factory) -> Iterator[tuple[RunningGateway, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("retrieve-keys")
    db = f"sqlite:///{tmp / 'gaud.db'}"
    store = Store(db)
    store.migrate()
    keys = {"claude": store.create_key("cleo", models=("claude-*",))[0], "any": store.create_key("andy")[0]}
    store.close()
    env = {**provider_env(fake_upstream_server.url), "GAUD_SPECS_DIR": str(spec_tree(tmp)),
           "GAUD_AUTH_ENABLED": "true", "GAUD_DATABASE_URL": db}
    running = start_gateway(env, tmp / "gateway.log")
    yield running, keys
    running.process.terminate()
    running.process.wait(10)


def test_retrieve_hides_what_the_key_may_not_call(keyed):
    running, keys = keyed
    with openai.OpenAI(base_url=f"{running.url}/v1", api_key=keys["claude"], max_retries=0) as client:
        assert client.models.retrieve("anthropic/claude-sonnet-4-20250514").owned_by == "anthropic"
        assert client.models.retrieve("claude-sonnet-4").id == "claude-sonnet-4"
        for model_id in ("gpt-4o", "openai/gpt-4o", "smart"):
            with pytest.raises(openai.NotFoundError) as hidden:
                client.models.retrieve(model_id)
            assert hidden.value.body["code"] == "model_not_found"
    with openai.OpenAI(base_url=f"{running.url}/v1", api_key=keys["any"], max_retries=0) as client:
        assert client.models.retrieve("openai/gpt-4o").id == "openai/gpt-4o"
    with (openai.OpenAI(base_url=f"{running.url}/v1", api_key="sk-gaud-nobody", max_retries=0) as client,
          pytest.raises(openai.AuthenticationError)):
        client.models.retrieve("smart")
    assert httpx.get(f"{running.url}/health").status_code == 200
