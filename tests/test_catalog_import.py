"""`gaud-engine catalog import`: a LiteLLM-format list -> models.d/ and pricing.d/, and the shipped catalogue.

The CLI runs on a copy of the repo's spec tree (tmp_path) against the vendored, trimmed list
tests/fixtures/litellm/model_prices.json (origin in the README beside it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine.cli.commands import main
from engine.spec.catalog_files import dump_yaml
from engine.spec.loader import load_catalog
from engine.spec.pricelist import ListRule, convert, per_million

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests" / "fixtures" / "litellm" / "model_prices.json"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in ("providers.d", "pricing.d", "models.d"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "routes.yaml", tmp_path / "routes.yaml")
    return tmp_path


def run(tree: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["catalog", "import", *args, "--specs", str(tree)])
    return result.exit_code, result.output


def changed_list(tmp_path: Path, edits: dict[str, dict[str, object]]) -> Path:
    data = json.loads(LIST.read_text())
    for key, fields in edits.items():
        data[key].update(fields)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(data))
    return path


def snapshot(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*.yaml"))}


# -- conversion -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("per_token", "expected"), [
    (3e-06, "3"), (1.25e-07, "0.125"), (2.5e-06, "2.5"), (3e-07, "0.3"), (1.5e-05, "15"), (2.8e-08, "0.028"),
    (1e-05, "10"), (0.0, "0"), (7e-08, "0.07"), (1.1e-06, "1.1"),
])
def test_prices_per_token_become_exact_per_million(per_token: float, expected: str) -> None:
    value = per_million(per_token)
    assert value == Decimal(expected)
    assert dump_yaml({"input": value}) == f"input: {expected}\n"


def test_written_numbers_have_no_float_noise_and_round_trip() -> None:
    data = {"models": {"m": {"input": per_million(3e-07), "output": per_million(1.1e-06), "source": "list.json",
                             "as_of": "2026-01-02", "tiers": [{"above": 200000, "input": per_million(6e-07),
                                                               "output": per_million(2.2e-06)}]}}}
    text = dump_yaml(data)
    assert "0.30000000000000004" not in text and "1.1000000000000001" not in text
    assert "input: 0.3\n" in text and "as_of: \"2026-01-02\"" in text
    loaded = yaml.safe_load(text)
    assert loaded["models"]["m"]["input"] == 0.3 and loaded["models"]["m"]["as_of"] == "2026-01-02"
    assert loaded["models"]["m"]["tiers"] == [{"above": 200000, "input": 0.6, "output": 2.2}]


RULE = ListRule.from_spec("acme", {"litellm_provider": ["acme", "acme_chat"], "key_prefix": "acme/"})
assert RULE is not None


def entry(**extra: object) -> dict[str, object]:
    return {"litellm_provider": "acme", "mode": "chat", "max_input_tokens": 1000, "max_output_tokens": 100,
            "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, **extra}


def test_tiers_keep_base_fields_the_tier_leaves_out() -> None:
    found, _ = convert({"acme/big": entry(cache_read_input_token_cost=1e-07, input_cost_per_token_above_200k_tokens=2e-06,
                                          output_cost_per_token_above_200k_tokens=4e-06,
                                          input_cost_per_token_above_200k_tokens_priority=9e-06,
                                          input_cost_per_token_batches=5e-07)}, RULE)
    price = found["big"].price
    assert price is not None
    assert price["tiers"] == [{"above": 200000, "input": Decimal(2), "output": Decimal(4), "cached_input": Decimal("0.1")}]
    assert price["input"] == Decimal(1)  # batches and priority variants are not ours


def test_dated_id_is_the_model_and_the_undated_its_alias() -> None:
    listed = {"m-1": entry(), "m-1-20250101": entry(), "n": entry(), "n-2025-01-01": entry(),
              "n-2025-02-01": entry(), "o": entry(), "o-20250101": entry(max_output_tokens=50)}
    unfolded, _ = convert(listed, RULE)
    assert {"m-1", "m-1-20250101"} <= set(unfolded)  # without fold_dated an undated id stays a model, sent as asked
    found, _ = convert(listed, dataclasses.replace(RULE, fold_dated=True))
    assert found["m-1-20250101"].model["aliases"] == ["m-1"] and "m-1" not in found
    assert {"n", "n-2025-01-01", "n-2025-02-01"} <= set(found)  # two dated ids with its data: unclear which
    assert {"o", "o-20250101"} <= set(found)  # different data: two models
    assert "aliases" not in found["o"].model


def test_selection_modes_prefix_and_missing_limits() -> None:
    found, skipped = convert({
        "acme/a": entry(supports_function_calling=True, supports_reasoning=True),
        "a": entry(max_output_tokens=5),  # a bare duplicate: the prefixed key wins
        "acme/resp": entry(mode="responses"),
        "acme/img": entry(mode="image_generation"),
        "acme/emb": entry(mode="embedding", max_output_tokens=None, output_cost_per_token=None),
        "acme/nolimits": entry(max_input_tokens=None),
        "other": {**entry(), "litellm_provider": "other"},
        "chat-model": {**entry(), "litellm_provider": "acme_chat"},
    }, RULE)
    assert sorted(found) == ["a", "chat-model", "emb"]
    assert found["a"].model["max_output_tokens"] == 100
    assert found["a"].model["capabilities"] == ["tools", "reasoning"]
    assert found["emb"].model == {"context_window": 1000, "capabilities": ["embeddings"]}
    assert found["emb"].price == {"input": Decimal(1), "output": Decimal(0)}
    assert "nolimits" in skipped


# -- the command -------------------------------------------------------------------------------------


def test_shipped_files_do_not_drift_from_the_vendored_list(tree: Path) -> None:
    code, output = run(tree, str(LIST), "--check")
    assert (code, output.strip()) == (0, "no drift")


def test_a_changed_price_is_reported_and_check_writes_nothing(tree: Path, tmp_path: Path) -> None:
    changed = changed_list(tmp_path, {"claude-opus-5": {"input_cost_per_token": 6e-06},
                                      "gpt-5.6": {"max_output_tokens": 65536}})
    before = snapshot(tree)
    code, output = run(tree, str(changed), "--check")
    assert code == 1
    assert output.splitlines() == ["anthropic claude-opus-5 price.input: 5 -> 6",
                                   "openai gpt-5.6 max_output_tokens: 128000 -> 65536"]
    assert snapshot(tree) == before


def test_import_writes_changes_and_keeps_the_spec_mapping(tree: Path, tmp_path: Path) -> None:
    changed = changed_list(tmp_path, {"claude-opus-5": {"input_cost_per_token": 6e-06}})
    specs = {p.name: p.read_bytes() for p in (tree / "providers.d").glob("*.yaml")}
    code, output = run(tree, str(changed))
    assert code == 0, output
    assert "anthropic: 0 added, 1 changed, 16 unchanged, 0 skipped" in output
    price = yaml.safe_load((tree / "pricing.d" / "anthropic.yaml").read_text())["models"]["claude-opus-5"]
    assert price["input"] == 6 and price["source"] == "changed.json"
    assert {p.name: p.read_bytes() for p in (tree / "providers.d").glob("*.yaml")} == specs
    assert run(tree, str(changed), "--check") == (0, "no drift\n")
    again = snapshot(tree)
    assert run(tree, str(changed))[0] == 0 and snapshot(tree) == again  # deterministic


def test_pinned_entries_are_left_alone(tree: Path, tmp_path: Path) -> None:
    pricing = tree / "pricing.d" / "anthropic.yaml"
    pricing.write_text(pricing.read_text().replace("  claude-opus-5:\n", "  claude-opus-5:\n    pinned: true\n"))
    models = tree / "models.d" / "openai.yaml"
    models.write_text(models.read_text().replace("  gpt-5.6:\n", "  gpt-5.6:\n    pinned: true\n"))
    assert not load_catalog(tree).problems
    changed = changed_list(tmp_path, {"claude-opus-5": {"input_cost_per_token": 6e-06},
                                      "gpt-5.6": {"max_output_tokens": 65536}})
    before = snapshot(tree)
    assert run(tree, str(changed), "--check") == (0, "no drift\n")
    assert run(tree, str(changed))[0] == 0
    assert snapshot(tree) == before


def test_provider_and_model_filters_narrow_the_import(tree: Path, tmp_path: Path) -> None:
    changed = changed_list(tmp_path, {"claude-opus-5": {"input_cost_per_token": 6e-06},
                                      "claude-sonnet-5": {"input_cost_per_token": 6e-06},
                                      "gpt-4o": {"input_cost_per_token": 6e-06}})
    code, output = run(tree, str(changed), "--check", "--provider", "anthropic", "--model", "claude-opus-*")
    assert (code, output.splitlines()) == (1, ["anthropic claude-opus-5 price.input: 5 -> 6"])
    # An alias selects its model: claude-opus-4-5 is the undated alias of claude-opus-4-5-20251101.
    assert run(tree, str(changed), "--check", "--model", "claude-opus-4-5") == (0, "no drift\n")
    code, output = run(tree, str(changed), "--provider", "nope")
    assert code == 2 and "no `catalog:` block in providers.d/ for nope" in output


def test_older_models_absent_from_the_list_are_kept(tree: Path, tmp_path: Path) -> None:
    data = {k: v for k, v in json.loads(LIST.read_text()).items() if k != "claude-opus-5"}
    (tmp_path / "short.json").write_text(json.dumps(data))
    assert run(tree, str(tmp_path / "short.json"))[0] == 0
    assert "claude-opus-5" in yaml.safe_load((tree / "models.d" / "anthropic.yaml").read_text())["models"]
    assert "claude-opus-5" in yaml.safe_load((tree / "pricing.d" / "anthropic.yaml").read_text())["models"]


@pytest.mark.parametrize("source", ["http://127.0.0.1:9/list.json", "missing.json"])
def test_an_unreadable_list_exits_2(tree: Path, source: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", "catalog", "import", source, "--specs", str(tree)],
                          capture_output=True, text=True, cwd=tree, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"Error: cannot read {source}")


# -- the shipped catalogue ---------------------------------------------------------------------------


def test_every_shipped_model_has_a_price_or_is_free_and_has_limits() -> None:
    catalog = load_catalog(ROOT)
    assert not catalog.problems, "\n".join(map(str, catalog.problems))
    from engine.spec.crossref import price_key

    for name, spec in catalog.providers.items():
        for model_id, info in spec.models.items():
            where = f"{name}/{model_id}"
            assert (info.free and info.free_reason) or price_key(catalog, name, model_id), f"{where} has no price"
            assert info.context_window, f"{where} has no context_window"
            assert "embeddings" in info.capabilities or info.max_output_tokens, f"{where} has no max_output_tokens"


def test_the_current_generation_is_listed() -> None:
    providers = load_catalog(ROOT).providers
    for provider, model in [("anthropic", "claude-haiku-4-5"), ("anthropic", "claude-opus-4-5"), ("openai", "gpt-5"),
                            ("openai", "gpt-4.1"), ("openai", "o4-mini"), ("gemini", "gemini-2.5-flash-lite"),
                            ("gemini", "gemini-3.8-flash"), ("mistral", "mistral-large-latest"),
                            ("cohere", "embed-v4.0"), ("copilot", "claude-sonnet-5")]:
        spec = providers[provider]
        assert model in spec.models or any(model in m.aliases for m in spec.models.values()), f"{provider}/{model}"


def test_validate_reports_an_unpriced_generated_model_at_its_line(tree: Path) -> None:
    models = tree / "models.d" / "anthropic.yaml"
    models.write_text(models.read_text() + "  claude-new-1:\n    context_window: 1000\n    max_output_tokens: 10\n"
                      "    capabilities: []\n")
    problems = [p for p in load_catalog(tree).problems if "claude-new-1" in p.message]
    assert len(problems) == 1
    line = models.read_text().splitlines().index("  claude-new-1:") + 1
    assert (problems[0].file, problems[0].line, problems[0].pointer) == ("models.d/anthropic.yaml", line, "/models/claude-new-1")


def test_a_spec_model_wins_over_a_generated_one(tree: Path) -> None:
    spec = tree / "providers.d" / "openai.yaml"
    # A hand-written gpt-4o (alias gpt-4o-2024-08-06): the generated entries of either name are dropped.
    spec.write_text(spec.read_text() + "\nmodels:\n  gpt-4o:\n    aliases: [gpt-4o-2024-08-06]\n"
                    "    context_window: 7\n    max_output_tokens: 7\n    capabilities: []\n")
    catalog = load_catalog(tree)
    gpt4o = catalog.providers["openai"].models["gpt-4o"]
    assert gpt4o.context_window == 7 and "gpt-4o-2024-08-06" not in catalog.providers["openai"].models
    assert "gpt-4o-2024-08-06" in gpt4o.aliases
    assert "gpt-4o-mini" in catalog.providers["openai"].models  # the other generated models stay


def test_a_models_file_without_a_spec_and_a_broken_one_are_reported(tree: Path) -> None:
    (tree / "models.d" / "nobody.yaml").write_text("models: {}\n")
    (tree / "models.d" / "groq.yaml").write_text("models:\n  x: {context_window: 1}\n")
    messages = [str(p) for p in load_catalog(tree).problems]
    assert any("models.d/nobody.yaml" in m and "no provider spec 'nobody'" in m for m in messages)
    assert any("models.d/groq.yaml" in m and "capabilities" in m for m in messages)
    assert "groq" in load_catalog(tree).providers  # the spec's own models still serve
