"""Cost of a request: every shipped price against hand-computed values, the `price` command, and
the same cost for a streamed and a non-streamed reply with the same usage.

Every expected value below was worked out by hand from pricing.d/ (USD per million tokens); the
arithmetic is written next to it, in millionths of a dollar before the final division.
"""

from __future__ import annotations

import functools
import json
import subprocess

import httpx
import pytest
import yaml
from click.testing import CliRunner

from engine.cli.commands import main
from engine.pipeline.pricing import Price, cost_of, price_for

from .conftest import ROOT
from .streams import raw_stream

M = 1_000_000


def usage(prompt: int, completion: int, cached: int = 0, written: int = 0) -> dict:
    """An OpenAI usage object as the engine produces it (`prompt_tokens` includes cached and written)."""
    details = {}
    if cached:
        details["cached_tokens"] = cached
    if written:
        details["cache_write_tokens"] = written
    return {"prompt_tokens": prompt, "completion_tokens": completion, **({"prompt_tokens_details": details} if details else {})}


PLAIN = usage(10_000, 2_000)
CACHED = usage(10_000, 2_000, cached=8_000)  # 2_000 uncached + 8_000 cache reads
CACHED_WRITTEN = usage(10_000, 2_000, cached=8_000, written=1_000)  # 1_000 uncached + 8_000 read + 1_000 written
LONG = usage(250_000, 4_000, cached=200_000, written=10_000)  # 40_000 uncached: above the 200K tier
LONG_READ = usage(250_000, 4_000, cached=200_000)  # 50_000 uncached: above the 200K tier
AT_TIER = usage(200_000, 1_000)  # exactly 200_000: not *above*, so the base price
PAST_TIER = usage(200_001, 1_000)
EMBED = usage(10_000, 0)
EMBED_CACHED = usage(10_000, 0, cached=8_000)

# (provider/model, usage, expected USD) -- the arithmetic is uncached*input + cached*cached_input
# + written*cache_write + completion*output, all / 1M.
CASES = [
    # Claude Sonnet 4: input 3, output 15, cached read 0.30, cache write 3.75;
    # above 200_000 prompt tokens: 6 / 22.5 / 0.60 / 7.50.
    ("anthropic/claude-sonnet-4-20250514", PLAIN, 0.06),  # 10_000*3 + 2_000*15 = 30_000 + 30_000 = 60_000
    ("anthropic/claude-sonnet-4-20250514", CACHED, 0.0384),  # 2_000*3 + 8_000*0.3 + 2_000*15 = 6_000 + 2_400 + 30_000
    ("anthropic/claude-sonnet-4-20250514", CACHED_WRITTEN, 0.03915),  # 1_000*3 + 8_000*0.3 + 1_000*3.75 + 2_000*15 = 3_000 + 2_400 + 3_750 + 30_000
    ("anthropic/claude-sonnet-4-20250514", LONG, 0.525),  # tier: 40_000*6 + 200_000*0.6 + 10_000*7.5 + 4_000*22.5 = 240_000 + 120_000 + 75_000 + 90_000
    ("anthropic/claude-sonnet-4-20250514", AT_TIER, 0.615),  # base: 200_000*3 + 1_000*15 = 600_000 + 15_000
    ("anthropic/claude-sonnet-4-20250514", PAST_TIER, 1.222506),  # tier: 200_001*6 + 1_000*22.5 = 1_200_006 + 22_500
    # Claude Opus 4: 15 / 75 / 1.50 / 18.75, no tier.
    ("anthropic/claude-opus-4-20250514", PLAIN, 0.30),  # 10_000*15 + 2_000*75 = 150_000 + 150_000
    ("anthropic/claude-opus-4-20250514", CACHED, 0.192),  # 2_000*15 + 8_000*1.5 + 2_000*75 = 30_000 + 12_000 + 150_000
    ("anthropic/claude-opus-4-20250514", CACHED_WRITTEN, 0.19575),  # 1_000*15 + 8_000*1.5 + 1_000*18.75 + 2_000*75 = 15_000 + 12_000 + 18_750 + 150_000
    ("anthropic/claude-opus-4-20250514", LONG, 1.3875),  # no tier: 40_000*15 + 200_000*1.5 + 10_000*18.75 + 4_000*75 = 600_000 + 300_000 + 187_500 + 300_000
    # Claude 3.5 Haiku: 0.80 / 4 / 0.08 / 1.00.
    ("anthropic/claude-3-5-haiku-20241022", PLAIN, 0.016),  # 10_000*0.8 + 2_000*4 = 8_000 + 8_000
    ("anthropic/claude-3-5-haiku-20241022", CACHED, 0.01024),  # 2_000*0.8 + 8_000*0.08 + 2_000*4 = 1_600 + 640 + 8_000
    ("anthropic/claude-3-5-haiku-20241022", CACHED_WRITTEN, 0.01044),  # 1_000*0.8 + 8_000*0.08 + 1_000*1 + 2_000*4 = 800 + 640 + 1_000 + 8_000
    # Gemini 2.5 Pro: 1.25 / 10 / cached 0.125 (no cache-write price: billed as input);
    # above 200_000 prompt tokens: 2.5 / 15 / 0.25.
    ("gemini/gemini-2.5-pro", PLAIN, 0.0325),  # 10_000*1.25 + 2_000*10 = 12_500 + 20_000
    ("gemini/gemini-2.5-pro", CACHED, 0.0235),  # 2_000*1.25 + 8_000*0.125 + 2_000*10 = 2_500 + 1_000 + 20_000
    ("gemini/gemini-2.5-pro", CACHED_WRITTEN, 0.0235),  # 1_000*1.25 + 8_000*0.125 + 1_000*1.25 + 2_000*10 = 1_250 + 1_000 + 1_250 + 20_000
    ("gemini/gemini-2.5-pro", LONG_READ, 0.235),  # tier: 50_000*2.5 + 200_000*0.25 + 4_000*15 = 125_000 + 50_000 + 60_000
    ("gemini/gemini-2.5-pro", AT_TIER, 0.26),  # base: 200_000*1.25 + 1_000*10 = 250_000 + 10_000
    ("gemini/gemini-2.5-pro", PAST_TIER, 0.5150025),  # tier: 200_001*2.5 + 1_000*15 = 500_002.5 + 15_000
    # Gemini 2.5 Flash: 0.30 / 2.50 / 0.03.
    ("gemini/gemini-2.5-flash", PLAIN, 0.008),  # 10_000*0.3 + 2_000*2.5 = 3_000 + 5_000
    ("gemini/gemini-2.5-flash", CACHED, 0.00584),  # 2_000*0.3 + 8_000*0.03 + 2_000*2.5 = 600 + 240 + 5_000
    ("gemini/gemini-2.5-flash", LONG_READ, 0.031),  # no tier: 50_000*0.3 + 200_000*0.03 + 4_000*2.5 = 15_000 + 6_000 + 10_000
    # Gemini 2.0 Flash: 0.10 / 0.40 / 0.025.
    ("gemini/gemini-2.0-flash", PLAIN, 0.0018),  # 10_000*0.1 + 2_000*0.4 = 1_000 + 800
    ("gemini/gemini-2.0-flash", CACHED, 0.0012),  # 2_000*0.1 + 8_000*0.025 + 2_000*0.4 = 200 + 200 + 800
    # GPT-4o: 2.50 / 10 / cached 1.25.
    ("openai/gpt-4o", PLAIN, 0.045),  # 10_000*2.5 + 2_000*10 = 25_000 + 20_000
    ("openai/gpt-4o", CACHED, 0.035),  # 2_000*2.5 + 8_000*1.25 + 2_000*10 = 5_000 + 10_000 + 20_000
    # GPT-4 Turbo: 10 / 30, no cached price: cache reads billed as input.
    ("openai/gpt-4-turbo", PLAIN, 0.16),  # 10_000*10 + 2_000*30 = 100_000 + 60_000
    ("openai/gpt-4-turbo", CACHED, 0.16),  # 2_000*10 + 8_000*10 + 2_000*30 = 20_000 + 80_000 + 60_000
    # o1: 15 / 60 / cached 7.50.
    ("openai/o1", PLAIN, 0.27),  # 10_000*15 + 2_000*60 = 150_000 + 120_000
    ("openai/o1", CACHED, 0.21),  # 2_000*15 + 8_000*7.5 + 2_000*60 = 30_000 + 60_000 + 120_000
    # o3-mini: 1.10 / 4.40 / cached 0.55.
    ("openai/o3-mini", PLAIN, 0.0198),  # 10_000*1.1 + 2_000*4.4 = 11_000 + 8_800
    ("openai/o3-mini", CACHED, 0.0154),  # 2_000*1.1 + 8_000*0.55 + 2_000*4.4 = 2_200 + 4_400 + 8_800
    # Embedding models: input only (output price 0), no cache discount.
    ("gemini/gemini-embedding-001", EMBED, 0.0015),  # 10_000*0.15 = 1_500
    ("gemini/gemini-embedding-001", EMBED_CACHED, 0.0015),  # 2_000*0.15 + 8_000*0.15 = 300 + 1_200
    ("openai/text-embedding-3-small", EMBED, 0.0002),  # 10_000*0.02 = 200
    ("openai/text-embedding-3-small", EMBED_CACHED, 0.0002),  # 2_000*0.02 + 8_000*0.02 = 40 + 160
    ("openai/text-embedding-3-large", EMBED, 0.0013),  # 10_000*0.13 = 1_300
    ("openai/text-embedding-3-large", EMBED_CACHED, 0.0013),  # 2_000*0.13 + 8_000*0.13 = 260 + 1_040
    # Copilot serves OpenAI's model ids and is priced by the same entries.
    ("copilot/gpt-4o", CACHED, 0.035),
    ("copilot/o3-mini", PLAIN, 0.0198),
    ("copilot/text-embedding-3-small", EMBED, 0.0002),
    # DeepSeek (both modes): 0.28 / 0.42 / cache hit 0.028.
    ("deepseek/deepseek-chat", PLAIN, 0.00364),  # 10_000*0.28 + 2_000*0.42 = 2_800 + 840
    ("deepseek/deepseek-chat", CACHED, 0.001624),  # 2_000*0.28 + 8_000*0.028 + 2_000*0.42 = 560 + 224 + 840
    ("deepseek/deepseek-reasoner", PLAIN, 0.00364),  # as deepseek-chat
    ("deepseek/deepseek-reasoner", CACHED, 0.001624),
    # Groq: no cached price, cache reads billed as input. Vendor-prefixed ids are keyed groq/<id>.
    ("groq/llama-3.3-70b-versatile", PLAIN, 0.00748),  # 10_000*0.59 + 2_000*0.79 = 5_900 + 1_580
    ("groq/llama-3.3-70b-versatile", CACHED, 0.00748),  # 2_000*0.59 + 8_000*0.59 + 2_000*0.79 = 1_180 + 4_720 + 1_580
    ("groq/llama-3.1-8b-instant", PLAIN, 0.00066),  # 10_000*0.05 + 2_000*0.08 = 500 + 160
    ("groq/llama-3.1-8b-instant", CACHED, 0.00066),
    ("groq/openai/gpt-oss-120b", PLAIN, 0.0027),  # 10_000*0.15 + 2_000*0.6 = 1_500 + 1_200
    ("groq/openai/gpt-oss-120b", CACHED, 0.0021),  # 2_000*0.15 + 8_000*0.075 + 2_000*0.6 = 300 + 600 + 1_200
    ("groq/openai/gpt-oss-20b", PLAIN, 0.00135),  # 10_000*0.075 + 2_000*0.3 = 750 + 600
    ("groq/openai/gpt-oss-20b", CACHED, 0.00105),  # 2_000*0.075 + 8_000*0.0375 + 2_000*0.3 = 150 + 300 + 600
    ("groq/qwen/qwen3-32b", PLAIN, 0.00408),  # 10_000*0.29 + 2_000*0.59 = 2_900 + 1_180
    ("groq/qwen/qwen3-32b", CACHED, 0.00408),
    ("groq/meta-llama/llama-4-scout-17b-16e-instruct", PLAIN, 0.00178),  # 10_000*0.11 + 2_000*0.34 = 1_100 + 680
    ("groq/meta-llama/llama-4-scout-17b-16e-instruct", CACHED, 0.00178),
    ("groq/moonshotai/kimi-k2-instruct-0905", PLAIN, 0.016),  # 10_000*1 + 2_000*3 = 10_000 + 6_000
    ("groq/moonshotai/kimi-k2-instruct-0905", CACHED, 0.016),
    # Mistral: no cached price.
    ("mistral/mistral-large-2411", PLAIN, 0.032),  # 10_000*2 + 2_000*6 = 20_000 + 12_000
    ("mistral/mistral-large-2411", CACHED, 0.032),
    ("mistral/mistral-medium-2508", PLAIN, 0.008),  # 10_000*0.4 + 2_000*2 = 4_000 + 4_000
    ("mistral/mistral-medium-2508", CACHED, 0.008),
    ("mistral/mistral-small-2506", PLAIN, 0.0016),  # 10_000*0.1 + 2_000*0.3 = 1_000 + 600
    ("mistral/mistral-small-2506", CACHED, 0.0016),
    ("mistral/codestral-2508", PLAIN, 0.0048),  # 10_000*0.3 + 2_000*0.9 = 3_000 + 1_800
    ("mistral/codestral-2508", CACHED, 0.00264),  # 2_000*0.3 + 8_000*0.03 + 2_000*0.9 = 600 + 240 + 1_800
    ("mistral/magistral-medium-2509", PLAIN, 0.03),  # 10_000*2 + 2_000*5 = 20_000 + 10_000
    ("mistral/magistral-medium-2509", CACHED, 0.03),
    # OpenRouter passes the vendors' prices through; keyed openrouter/<id>.
    ("openrouter/anthropic/claude-sonnet-4", PLAIN, 0.06),  # 10_000*3 + 2_000*15 = 30_000 + 30_000
    ("openrouter/anthropic/claude-sonnet-4", CACHED_WRITTEN, 0.03915),  # 1_000*3 + 8_000*0.3 + 1_000*3.75 + 2_000*15 = 3_000 + 2_400 + 3_750 + 30_000
    ("openrouter/openai/gpt-4o", PLAIN, 0.045),  # 10_000*2.5 + 2_000*10 = 25_000 + 20_000
    ("openrouter/openai/gpt-4o", CACHED, 0.035),  # 2_000*2.5 + 8_000*1.25 + 2_000*10 = 5_000 + 10_000 + 20_000
    ("openrouter/google/gemini-2.5-flash", PLAIN, 0.008),  # 10_000*0.3 + 2_000*2.5 = 3_000 + 5_000
    ("openrouter/google/gemini-2.5-flash", CACHED, 0.00584),  # 2_000*0.3 + 8_000*0.03 + 2_000*2.5 = 600 + 240 + 5_000
    # Cohere, per billed token; no cached price.
    ("cohere/command-a-03-2025", PLAIN, 0.045),  # 10_000*2.5 + 2_000*10 = 25_000 + 20_000
    ("cohere/command-a-03-2025", CACHED, 0.045),
    ("cohere/command-r-plus-08-2024", PLAIN, 0.045),  # as command-a
    ("cohere/command-r-plus-08-2024", CACHED, 0.045),
    ("cohere/command-r-08-2024", PLAIN, 0.0027),  # 10_000*0.15 + 2_000*0.6 = 1_500 + 1_200
    ("cohere/command-r-08-2024", CACHED, 0.0027),
    ("cohere/command-r7b-12-2024", PLAIN, 0.000675),  # 10_000*0.0375 + 2_000*0.15 = 375 + 300
    ("cohere/command-r7b-12-2024", CACHED, 0.000675),
    # Azure OpenAI (pricing.d/azure.yaml, keyed azure/<model>: not OpenAI's prices for the same ids).
    ("azure/gpt-4.1", PLAIN, 0.036),  # 10_000*2 + 2_000*8 = 20_000 + 16_000
    ("azure/gpt-4.1", CACHED, 0.024),  # 2_000*2 + 8_000*0.5 + 2_000*8 = 4_000 + 4_000 + 16_000
    ("azure/gpt-4.1-mini", PLAIN, 0.0072),  # 10_000*0.4 + 2_000*1.6 = 4_000 + 3_200
    ("azure/gpt-4.1-mini", CACHED, 0.0048),  # 2_000*0.4 + 8_000*0.1 + 2_000*1.6 = 800 + 800 + 3_200
    ("azure/gpt-4.1-nano", PLAIN, 0.0018),  # 10_000*0.1 + 2_000*0.4 = 1_000 + 800
    ("azure/gpt-4.1-nano", CACHED, 0.0012),  # 2_000*0.1 + 8_000*0.025 + 2_000*0.4 = 200 + 200 + 800
    ("azure/gpt-5", PLAIN, 0.0325),  # 10_000*1.25 + 2_000*10 = 12_500 + 20_000
    ("azure/gpt-5", CACHED, 0.0235),  # 2_000*1.25 + 8_000*0.125 + 2_000*10 = 2_500 + 1_000 + 20_000
    ("azure/gpt-5-mini", PLAIN, 0.0065),  # 10_000*0.25 + 2_000*2 = 2_500 + 4_000
    ("azure/gpt-5-mini", CACHED, 0.0047),  # 2_000*0.25 + 8_000*0.025 + 2_000*2 = 500 + 200 + 4_000
    ("azure/gpt-5-nano", PLAIN, 0.0013),  # 10_000*0.05 + 2_000*0.4 = 500 + 800
    ("azure/gpt-5-nano", CACHED, 0.00094),  # 2_000*0.05 + 8_000*0.005 + 2_000*0.4 = 100 + 40 + 800
    ("azure/o4-mini", PLAIN, 0.0198),  # 10_000*1.1 + 2_000*4.4 = 11_000 + 8_800
    ("azure/o4-mini", CACHED, 0.0132),  # 2_000*1.1 + 8_000*0.275 + 2_000*4.4 = 2_200 + 2_200 + 8_800
    ("azure/text-embedding-3-small", EMBED, 0.00022),  # 10_000*0.022
    ("azure/text-embedding-3-small", EMBED_CACHED, 0.00022),  # no cached price: all at 0.022
    ("azure/text-embedding-3-large", EMBED, 0.00143),  # 10_000*0.143
    ("azure/text-embedding-3-large", EMBED_CACHED, 0.00143),
]


@functools.cache
def _shipped_model_ids() -> frozenset[str]:
    """The price keys of the shipped pricing.d/ (read once: the case tables ask for it per case)."""
    ids: set[str] = set()
    for path in sorted((ROOT / "pricing.d").glob("*.yaml")):
        ids |= set(yaml.safe_load(path.read_text())["models"])
    return frozenset(ids)


def _hand_written_ids() -> set[str]:
    """Prices read from the providers' pages (a URL source); those `gaud-engine catalog import`
    writes from a list are checked by tests/test_catalog_import.py (exact conversion, no drift)."""
    ids: set[str] = set()
    for path in sorted((ROOT / "pricing.d").glob("*.yaml")):
        models = yaml.safe_load(path.read_text())["models"]
        ids |= {key for key, price in models.items() if str(price["source"]).startswith("http")}
    return ids


def _key(name: str) -> str:
    """The pricing.d key that prices `provider/model`, looked up as the engine does: the
    provider-specific `provider/model` entry first (vendor-prefixed ids such as groq/openai/gpt-oss-120b
    are keyed so), else the bare model id."""
    return name if name in _shipped_model_ids() else name.split("/", 1)[1]


def test_every_shipped_model_has_hand_computed_cases():
    shipped = _hand_written_ids()
    tested = {_key(name) for name, _, _ in CASES}
    assert shipped <= tested, f"no hand-computed cost for {sorted(shipped - tested)}"
    # Each one with and without cached tokens.
    for model in shipped:
        uses = [u for name, u, _ in CASES if _key(name) == model]
        assert any(u is PLAIN or u is EMBED for u in uses), model
        assert any(u is CACHED or u is CACHED_WRITTEN or u is EMBED_CACHED for u in uses), model


@pytest.mark.parametrize(("name", "use", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_cost_matches_hand_computed_value(catalog, name, use, expected):
    provider, model = name.split("/", 1)
    if _key(name) not in _shipped_model_ids():
        pytest.skip(f"{model} is not in pricing.d/")
    price = price_for(catalog, provider, model)
    assert price is not None
    assert cost_of(price, use) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_tiers_are_parsed_and_chosen_by_prompt_size(catalog):
    sonnet = price_for(catalog, "anthropic", "claude-sonnet-4-20250514")
    assert (sonnet.input, sonnet.output, sonnet.cached_input, sonnet.cache_write) == (3.0, 15.0, 0.3, 3.75)
    assert sonnet.for_prompt(200_000) is sonnet
    assert sonnet.for_prompt(200_001) == Price(6.0, 22.5, 0.6, 7.5)
    pro = price_for(catalog, "gemini", "gemini-2.5-pro")
    # A tier without cache_write bills writes at the tier's own input price.
    assert pro.for_prompt(250_000) == Price(2.5, 15.0, 0.25, 2.5)
    assert pro.cache_write == 1.25
    for model in _hand_written_ids() - {"claude-sonnet-4-20250514", "gemini-2.5-pro"}:
        assert "tiers" not in catalog.pricing[model], model


def test_several_tiers_pick_the_highest_passed():
    price = Price.from_spec({
        "input": 1, "output": 2,
        "tiers": [{"above": 500_000, "input": 4, "output": 8}, {"above": 100_000, "input": 2, "output": 4}],
    })
    assert cost_of(price, usage(100_000, 1_000)) == pytest.approx((100_000 * 1 + 1_000 * 2) / M)
    assert cost_of(price, usage(100_001, 1_000)) == pytest.approx((100_001 * 2 + 1_000 * 4) / M)
    assert cost_of(price, usage(600_000, 1_000)) == pytest.approx((600_000 * 4 + 1_000 * 8) / M)


def test_degenerate_usages():
    price = Price.from_spec({"input": 3, "output": 15, "cached_input": 0.3})
    assert cost_of(price, {}) == 0.0
    assert cost_of(price, {"prompt_tokens": None, "completion_tokens": None, "prompt_tokens_details": None}) == 0.0
    # Cached tokens never make the uncached count negative.
    assert cost_of(price, usage(100, 0, cached=150)) == pytest.approx(150 * 0.3 / M)


def test_unpriced_model_has_no_price(catalog):
    assert price_for(catalog, "anthropic", "claude-no-such-model") is None


# -- the `price` command ---------------------------------------------------------------------------

# (model argument, --input, --output, --cached, --cache-write, expected line)
CLI_CASES = [
    ("anthropic/claude-sonnet-4-20250514", 10_000, 2_000, 8_000, 1_000, "anthropic/claude-sonnet-4-20250514: $0.039150"),
    ("claude-sonnet-4", 250_000, 4_000, 200_000, 10_000, "anthropic/claude-sonnet-4-20250514: $0.525000"),
    ("claude-opus-4", 10_000, 2_000, 0, 0, "anthropic/claude-opus-4-20250514: $0.300000"),
    ("anthropic/claude-3-5-haiku-20241022", 10_000, 2_000, 8_000, 1_000, "anthropic/claude-3-5-haiku-20241022: $0.010440"),
    ("gemini-2.5-pro", 250_000, 4_000, 200_000, 0, "gemini/gemini-2.5-pro: $0.235000"),
    ("gemini/gemini-2.5-flash", 10_000, 2_000, 8_000, 0, "gemini/gemini-2.5-flash: $0.005840"),
    ("gemini/gemini-2.0-flash", 10_000, 2_000, 0, 0, "gemini/gemini-2.0-flash: $0.001800"),
    ("gpt-4o", 10_000, 2_000, 8_000, 0, "openai/gpt-4o: $0.035000"),
    ("gpt-4-turbo", 10_000, 2_000, 8_000, 0, "openai/gpt-4-turbo: $0.160000"),
    ("o1", 10_000, 2_000, 8_000, 0, "openai/o1: $0.210000"),
    ("o3-mini", 10_000, 2_000, 0, 0, "openai/o3-mini: $0.019800"),
    ("copilot/gpt-4o", 10_000, 2_000, 8_000, 0, "copilot/gpt-4o: $0.035000"),
    ("gemini/gemini-embedding-001", 10_000, 0, 0, 0, "gemini/gemini-embedding-001: $0.001500"),
    ("openai/text-embedding-3-small", 10_000, 0, 0, 0, "openai/text-embedding-3-small: $0.000200"),
    ("openai/text-embedding-3-large", 10_000, 0, 0, 0, "openai/text-embedding-3-large: $0.001300"),
    # `smart` routes to Claude Sonnet 4 first: 18_000*0.3 + 2_000*3 + 500*15 = 5_400 + 6_000 + 7_500
    ("smart", 20_000, 500, 18_000, 0, "anthropic/claude-sonnet-4-20250514: $0.018900"),
    # The providers added as spec files only (values as in CASES above).
    ("deepseek/deepseek-chat", 10_000, 2_000, 8_000, 0, "deepseek/deepseek-chat: $0.001624"),
    ("deepseek-reasoner", 10_000, 2_000, 0, 0, "deepseek/deepseek-reasoner: $0.003640"),
    ("groq/llama-3.3-70b-versatile", 10_000, 2_000, 0, 0, "groq/llama-3.3-70b-versatile: $0.007480"),
    ("llama-3.1-8b-instant", 10_000, 2_000, 0, 0, "groq/llama-3.1-8b-instant: $0.000660"),
    ("groq/openai/gpt-oss-120b", 10_000, 2_000, 0, 0, "groq/openai/gpt-oss-120b: $0.002700"),
    ("groq/openai/gpt-oss-20b", 10_000, 2_000, 0, 0, "groq/openai/gpt-oss-20b: $0.001350"),
    ("groq/qwen/qwen3-32b", 10_000, 2_000, 0, 0, "groq/qwen/qwen3-32b: $0.004080"),
    ("groq/meta-llama/llama-4-scout-17b-16e-instruct", 10_000, 2_000, 0, 0,
     "groq/meta-llama/llama-4-scout-17b-16e-instruct: $0.001780"),
    ("groq/moonshotai/kimi-k2-instruct-0905", 10_000, 2_000, 0, 0, "groq/moonshotai/kimi-k2-instruct-0905: $0.016000"),
    ("mistral-large-2411", 10_000, 2_000, 0, 0, "mistral/mistral-large-2411: $0.032000"),
    ("mistral/mistral-medium-2508", 10_000, 2_000, 0, 0, "mistral/mistral-medium-2508: $0.008000"),
    ("mistral-small-2506", 10_000, 2_000, 0, 0, "mistral/mistral-small-2506: $0.001600"),
    ("codestral-2508", 10_000, 2_000, 0, 0, "mistral/codestral-2508: $0.004800"),
    ("magistral-medium-2509", 10_000, 2_000, 0, 0, "mistral/magistral-medium-2509: $0.030000"),
    ("openrouter/anthropic/claude-sonnet-4", 10_000, 2_000, 8_000, 1_000, "openrouter/anthropic/claude-sonnet-4: $0.039150"),
    ("openrouter/openai/gpt-4o", 10_000, 2_000, 8_000, 0, "openrouter/openai/gpt-4o: $0.035000"),
    ("openrouter/google/gemini-2.5-flash", 10_000, 2_000, 8_000, 0, "openrouter/google/gemini-2.5-flash: $0.005840"),
    ("command-a-03-2025", 10_000, 2_000, 0, 0, "cohere/command-a-03-2025: $0.045000"),
    ("cohere/command-r-plus-08-2024", 10_000, 2_000, 0, 0, "cohere/command-r-plus-08-2024: $0.045000"),
    ("cohere/command-r-08-2024", 10_000, 2_000, 0, 0, "cohere/command-r-08-2024: $0.002700"),
    ("command-r7b-12-2024", 10_000, 2_000, 0, 0, "cohere/command-r7b-12-2024: $0.000675"),
    # Azure: the provider must be named, the bare ids are OpenAI's (values as in CASES above).
    ("azure/gpt-4.1", 10_000, 2_000, 8_000, 0, "azure/gpt-4.1: $0.024000"),
    ("azure/gpt-4.1-mini", 10_000, 2_000, 0, 0, "azure/gpt-4.1-mini: $0.007200"),
    ("azure/gpt-4.1-nano", 10_000, 2_000, 8_000, 0, "azure/gpt-4.1-nano: $0.001200"),
    ("azure/gpt-5", 10_000, 2_000, 0, 0, "azure/gpt-5: $0.032500"),
    ("azure/gpt-5-mini", 10_000, 2_000, 8_000, 0, "azure/gpt-5-mini: $0.004700"),
    ("azure/gpt-5-nano", 10_000, 2_000, 8_000, 0, "azure/gpt-5-nano: $0.000940"),
    ("azure/o4-mini", 10_000, 2_000, 0, 0, "azure/o4-mini: $0.019800"),
    ("azure/text-embedding-3-small", 10_000, 0, 0, 0, "azure/text-embedding-3-small: $0.000220"),
    ("azure/text-embedding-3-large", 10_000, 0, 0, 0, "azure/text-embedding-3-large: $0.001430"),
]


def _first_cost(output: str) -> str:
    """`provider/model: $cost` from the first deployment row of the `price` table."""
    lines = output.splitlines()
    row = lines[next(i for i, text in enumerate(lines) if text.startswith("deployment ")) + 1].split()
    return f"{row[0]}: {next(cell for cell in row if cell.startswith('$'))}"


def _line_key(line: str) -> str:
    return _key(line.rsplit(": $", 1)[0])


@pytest.mark.parametrize(("model", "inp", "out", "cached", "written", "line"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_price_command(model, inp, out, cached, written, line):
    if _line_key(line) not in _shipped_model_ids():
        pytest.skip("not in pricing.d/")
    args = ["price", model, "--input", str(inp), "--output", str(out), "--cached", str(cached), "--cache-write", str(written)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _first_cost(result.output) == line


def test_price_command_covers_every_shipped_model():
    assert _hand_written_ids() <= {_line_key(c[-1]) for c in CLI_CASES}


def test_price_command_installed_entry_point():
    out = subprocess.run(
        ["gaud-engine", "price", "claude-sonnet-4", "--input", "20000", "--output", "500", "--cached", "18000"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    # 2_000*3 + 18_000*0.3 + 500*15 = 6_000 + 5_400 + 7_500 = 18_900 millionths
    assert _first_cost(out) == "anthropic/claude-sonnet-4-20250514: $0.018900"


def test_price_command_errors():
    result = CliRunner().invoke(main, ["price", "no-such-model", "--input", "1", "--output", "1"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["price", "anthropic/claude-unpriced", "--input", "1", "--output", "1"])
    assert result.exit_code == 1 and "'anthropic/claude-unpriced' is not listed" in result.output


# -- streamed and non-streamed replies cost the same ---------------------------------------------


def _sse(event: str | None, data: object) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


def anthropic_stream(input_tokens: int, cache_read: int, cache_write: int, output_tokens: int) -> list[bytes]:
    """A Messages stream whose usage is split as the API does: prompt counts in message_start,
    the final output count alone in message_delta."""
    start_usage = {"input_tokens": input_tokens, "cache_creation_input_tokens": cache_write,
                   "cache_read_input_tokens": cache_read, "output_tokens": 1}
    return [
        _sse("message_start", {"type": "message_start", "message": {
            "id": "msg_costparity", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Drills are in section 4."}}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]


def openai_stream(prompt: int, completion: int, cached: int) -> list[bytes]:
    base = {"id": "chatcmpl-costparity", "object": "chat.completion.chunk", "created": 1767225600, "model": "gpt-4o"}
    return [
        _sse(None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Section 4."}, "finish_reason": None}]}),
        _sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        _sse(None, {**base, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                      "total_tokens": prompt + completion,
                                                      "prompt_tokens_details": {"cached_tokens": cached}}}),
        _sse(None, "[DONE]"),
    ]


def gemini_stream(prompt: int, completion: int, cached: int) -> list[bytes]:
    return [
        _sse(None, {"candidates": [{"content": {"parts": [{"text": "Section 4"}], "role": "model"}, "index": 0}],
                    "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt}}),
        _sse(None, {"candidates": [{"content": {"parts": [{"text": " covers drills."}], "role": "model"}, "index": 0,
                                    "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                                      "totalTokenCount": prompt + completion, "cachedContentTokenCount": cached}}),
    ]


PARITY = [
    # messages_cache_usage.json: 21 uncached + 18_000 read + 2_048 written in, 15 out, at Sonnet 4 prices:
    # 21*3 + 18_000*0.3 + 2_048*3.75 + 15*15 = 63 + 5_400 + 7_680 + 225 = 13_368 millionths.
    ("claude-sonnet-4", "anthropic", "messages_cache_usage.json", anthropic_stream(21, 18_000, 2_048, 15), 0.013368),
    # chat_completion_cached_usage.json: 20_510 in (20_480 cached), 7 out, at GPT-4o prices:
    # 30*2.5 + 20_480*1.25 + 7*10 = 75 + 25_600 + 70 = 25_745 millionths.
    ("gpt-4o", "openai", "chat_completion_cached_usage.json", openai_stream(20_510, 7, 20_480), 0.025745),
    # generate_cached_usage.json: 20_510 in (20_480 cached), 7 out, at Gemini 2.5 Flash prices:
    # 30*0.3 + 20_480*0.03 + 7*2.5 = 9 + 614.4 + 17.5 = 640.9 millionths.
    ("gemini-2.5-flash", "gemini", "generate_cached_usage.json", gemini_stream(20_510, 7, 20_480), 0.0006409),
]


@pytest.mark.parametrize(("model", "provider", "fixture", "frames", "expected"), PARITY, ids=[p[1] for p in PARITY])
def test_stream_costs_the_same_as_non_stream(gateway, upstream, model, provider, fixture, frames, expected):
    messages = [{"role": "user", "content": "Where are the drills?"}]
    upstream.reply_fixture(provider, fixture)
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": model, "messages": messages}, timeout=20)
    assert reply.status_code == 200, reply.text
    header_cost = float(reply.headers["x-gaud-cost"])
    non_stream_usage = reply.json()["usage"]

    upstream.reply(frames=frames, content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": model, "messages": messages, "stream_options": {"include_usage": True}})
    assert done
    final = objects[-1]
    assert final["choices"] == []
    stream_usage = dict(final["usage"])
    stream_cost = stream_usage.pop("cost")
    # The same usage, so the same cost; the header carries 6 decimals, usage.cost 8.
    for field in ("prompt_tokens", "completion_tokens"):
        assert stream_usage[field] == non_stream_usage[field]
    assert stream_usage["prompt_tokens_details"]["cached_tokens"] == non_stream_usage["prompt_tokens_details"]["cached_tokens"]
    assert stream_cost == pytest.approx(expected, abs=1e-9)
    assert header_cost == pytest.approx(expected, abs=5e-7)
    assert header_cost == pytest.approx(stream_cost, abs=5e-7)


def test_no_usage_chunk_without_include_usage(gateway, upstream):
    upstream.reply(frames=anthropic_stream(21, 18_000, 2_048, 15), content_type="text/event-stream")
    objects, done = raw_stream(gateway.url, {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "Hi"}]})
    assert done and all("usage" not in o or o["usage"] is None for o in objects)


def test_bundled_prices_have_a_source(catalog):
    for key in _shipped_model_ids():
        entry = catalog.pricing[key]
        # A URL, or the name of the list `gaud-engine catalog import` read it from.
        assert entry["source"].startswith("https://") or entry["source"].endswith(".json"), key
        assert entry["as_of"], key
