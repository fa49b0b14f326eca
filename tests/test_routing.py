"""Router: strategies over many requests, CEL `when` rules, `routes explain`, bad rules in validate."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine import load_catalog
from engine.cli.commands import main
from engine.errors import NotFound
from engine.pipeline.routing import Router

from .conftest import ROOT, TEST_SECRETS
from .spec_trees import copy_models

HELLO = [{"role": "user", "content": "Hello"}]
THREE = [
    {"provider": "anthropic", "model": "claude-sonnet-4-20250514"},
    {"provider": "gemini", "model": "gemini-2.5-flash"},
    {"provider": "openai", "model": "gpt-4o"},
]


def make_tree(tmp_path: Path, aliases: dict, defaults: dict | None = None) -> Path:
    shutil.copytree(ROOT / "providers.d", tmp_path / "providers.d")
    shutil.copytree(ROOT / "pricing.d", tmp_path / "pricing.d")
    copy_models(tmp_path)
    routes = {"aliases": aliases}
    if defaults:
        routes["defaults"] = defaults
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return tmp_path


def router_for(tmp_path: Path, aliases: dict, **kwargs) -> Router:
    catalog = load_catalog(make_tree(tmp_path, aliases), environ={})
    catalog.raise_for_problems()
    return Router(catalog, **kwargs)


def first_choices(router: Router, alias: str, n: int) -> Counter:
    return Counter(router.plan({"model": alias, "messages": HELLO}).targets[0].target.provider.name for _ in range(n))


def test_priority_keeps_the_listed_order(tmp_path):
    router = router_for(tmp_path, {"a": {"candidates": THREE}})
    for _ in range(20):
        plan = router.plan({"model": "a", "messages": HELLO})
        assert [p.target.provider.name for p in plan.targets] == ["anthropic", "gemini", "openai"]


def test_round_robin_rotates_evenly(tmp_path):
    router = router_for(tmp_path, {"rr": {"strategy": "round-robin", "candidates": THREE}})
    orders = [[p.target.provider.name for p in router.plan({"model": "rr", "messages": HELLO}).targets] for _ in range(3)]
    assert orders == [["anthropic", "gemini", "openai"], ["gemini", "openai", "anthropic"], ["openai", "anthropic", "gemini"]]
    assert first_choices(router, "rr", 300) == {"anthropic": 100, "gemini": 100, "openai": 100}


def test_weighted_random_follows_the_weights(tmp_path):
    candidates = [dict(THREE[0], weight=6), dict(THREE[1], weight=3), dict(THREE[2], weight=1)]
    router = router_for(tmp_path, {"w": {"strategy": "weighted", "candidates": candidates}}, rng=random.Random(42))
    counts = first_choices(router, "w", 4000)
    assert abs(counts["anthropic"] / 4000 - 0.6) < 0.03
    assert abs(counts["gemini"] / 4000 - 0.3) < 0.03
    assert abs(counts["openai"] / 4000 - 0.1) < 0.03
    # Every plan still lists every candidate once (the fallbacks).
    plan = router.plan({"model": "w", "messages": HELLO})
    assert sorted(p.target.provider.name for p in plan.targets) == ["anthropic", "gemini", "openai"]


def test_least_busy_prefers_fewest_in_flight(tmp_path):
    router = router_for(tmp_path, {"lb": {"strategy": "least-busy", "candidates": THREE}})
    router.started("anthropic/claude-sonnet-4-20250514")
    router.started("anthropic/claude-sonnet-4-20250514")
    router.started("gemini/gemini-2.5-flash")
    names = [p.target.provider.name for p in router.plan({"model": "lb", "messages": HELLO}).targets]
    assert names == ["openai", "gemini", "anthropic"]
    router.finished("anthropic/claude-sonnet-4-20250514", 0.1)
    router.finished("anthropic/claude-sonnet-4-20250514", 0.1)
    router.started("openai/gpt-4o")
    router.started("openai/gpt-4o")
    names = [p.target.provider.name for p in router.plan({"model": "lb", "messages": HELLO}).targets]
    assert names == ["anthropic", "gemini", "openai"]


def test_lowest_cost_orders_by_list_price(tmp_path):
    router = router_for(tmp_path, {"cheap": {"strategy": "lowest-cost", "candidates": THREE}})
    names = [p.target.name for p in router.plan({"model": "cheap", "messages": HELLO}).targets]
    # gemini-2.5-flash 0.30+2.50 < gpt-4o 2.50+10 < claude-sonnet-4 3+15
    assert names == ["gemini/gemini-2.5-flash", "openai/gpt-4o", "anthropic/claude-sonnet-4-20250514"]


def test_lowest_latency_uses_a_moving_average(tmp_path):
    router = router_for(tmp_path, {"fast": {"strategy": "lowest-latency", "candidates": THREE}})
    # Unmeasured deployments go first so each gets measured.
    router.finished("anthropic/claude-sonnet-4-20250514", 0.5)
    names = [p.target.provider.name for p in router.plan({"model": "fast", "messages": HELLO}).targets]
    assert names[-1] == "anthropic"
    router.finished("gemini/gemini-2.5-flash", 0.9)
    router.finished("openai/gpt-4o", 0.2)
    names = [p.target.provider.name for p in router.plan({"model": "fast", "messages": HELLO}).targets]
    assert names == ["openai", "anthropic", "gemini"]
    for _ in range(20):  # gemini gets faster: its average follows
        router.finished("gemini/gemini-2.5-flash", 0.05)
    assert router.plan({"model": "fast", "messages": HELLO}).targets[0].target.provider.name == "gemini"


def test_when_rules_filter_candidates(tmp_path):
    aliases = {
        "smart": {
            "candidates": [
                dict(THREE[0], when="request.estimated_tokens <= 150000"),
                dict(THREE[1], when="request.n_tools > 0"),
                THREE[2],
            ]
        }
    }
    router = router_for(tmp_path, aliases)
    plain = router.plan({"model": "smart", "messages": HELLO})
    assert [p.target.provider.name for p in plain.targets] == ["anthropic", "openai"]
    tools = [{"type": "function", "function": {"name": "f"}}]
    with_tools = router.plan({"model": "smart", "messages": HELLO, "tools": tools})
    assert [p.target.provider.name for p in with_tools.targets] == ["anthropic", "gemini", "openai"]
    huge = router.plan({"model": "smart", "messages": [{"role": "user", "content": "x" * 800_000}]})
    assert [p.target.provider.name for p in huge.targets] == ["openai"]


def test_alias_when_and_tags(tmp_path):
    aliases = {"batch": {"when": '"batch" in request.tags', "candidates": [THREE[1]]}}
    router = router_for(tmp_path, aliases)
    assert router.plan({"model": "batch", "messages": HELLO, "metadata": {"tags": "batch,nightly"}}).targets
    with pytest.raises(NotFound):
        router.plan({"model": "batch", "messages": HELLO})


def test_rule_error_at_run_time_counts_as_no_match(tmp_path, caplog):
    # Passes the load-time smoke test (the sample request has one tag) but fails on a request
    # without tags: that evaluation error is logged and counts as no match, never a crash.
    aliases = {"gold": {"candidates": [dict(THREE[0], when='request.tags[0] == "gold"'), THREE[2]]}}
    router = router_for(tmp_path, aliases)
    plan = router.plan({"model": "gold", "messages": HELLO})
    assert [p.target.provider.name for p in plan.targets] == ["openai"]
    assert "failed" in caplog.text
    plan = router.plan({"model": "gold", "messages": HELLO, "tags": ["gold"]})
    assert [p.target.provider.name for p in plan.targets] == ["anthropic", "openai"]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("error.kind ==", "bad CEL expression"),
        ("nope > 1", "nope"),
        ("attempt + 1", "true or false"),
    ],
)
def test_bad_cel_rejected_by_validate_with_file_and_line(tmp_path, expression, fragment, monkeypatch):
    make_tree(tmp_path, {"a": {"retry": expression, "candidates": THREE}})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "."])
    assert result.exit_code == 1
    line = [text for text in result.output.splitlines() if "/aliases/a/retry" in text]
    assert line, result.output
    assert line[0].startswith("routes.yaml:")
    assert fragment in line[0]


EXPLAIN_CASES = {
    "shipped_smart": {"model": "smart", "messages": HELLO},
    "shipped_fast_tools": {"model": "fast", "messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]},
    "direct_provider_model": {"model": "gemini/gemini-2.5-pro", "messages": HELLO, "stream": True},
}


def shipped_tree_with_keys(monkeypatch):
    """The shipped tree with the tests' keys set: the same output whatever keys this machine has
    (a provider without its key is noted as skipped)."""
    monkeypatch.setenv("GAUD_SPECS_DIR", str(ROOT))
    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("case", sorted(EXPLAIN_CASES))
def test_routes_explain_snapshot(case, snapshot, monkeypatch):
    import json

    shipped_tree_with_keys(monkeypatch)
    result = CliRunner().invoke(main, ["routes", "explain", json.dumps(EXPLAIN_CASES[case])])
    assert result.exit_code == 0, result.output
    assert result.output == snapshot


def test_routes_explain_long_prompt_skips_claude(snapshot, monkeypatch):
    import json

    shipped_tree_with_keys(monkeypatch)
    body = {"model": "smart", "messages": [{"role": "user", "content": "x" * 700_000}]}
    result = CliRunner().invoke(main, ["routes", "explain", json.dumps(body)])
    assert result.exit_code == 0
    assert "-> false, skipped" in result.output
    assert "1. gemini/gemini-2.5-pro" in result.output
    assert result.output == snapshot


def test_routes_explain_bad_input():
    result = CliRunner().invoke(main, ["routes", "explain", "{nope"])
    assert result.exit_code != 0 and "not valid JSON" in result.output
    result = CliRunner().invoke(main, ["routes", "explain", '{"model": "no-such", "messages": []}'])
    assert result.exit_code != 0 and "does not exist" in result.output
