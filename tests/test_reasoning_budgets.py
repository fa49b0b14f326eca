"""Reasoning budgets that are valid requests (issue 23 item 3).

Every effort level with every kind of max_tokens (absent, below, equal to, above the budget, at and
above the model's output limit) must give an upstream request that satisfies the provider's
documented constraints. The assertions are the constraints themselves, not snapshots:
Anthropic (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking):
  1024 <= thinking.budget_tokens < max_tokens <= the model's max output tokens.
Gemini 2.5 (https://ai.google.dev/gemini-api/docs/thinking): thinkingBudget within the model's range.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from engine import build_request
from engine.errors import InvalidRequest
from engine.pipeline.validation import validate_request
from engine.spec.loader import Catalog
from engine.spec.models import Target

from .conftest import checked_catalog, one_target

ENVIRON = {"ANTHROPIC_API_KEY": "sk-ant-test", "GEMINI_API_KEY": "gemini-test", "OPENAI_API_KEY": "sk-test"}
EFFORTS = (None, "none", "minimal", "low", "medium", "high")
ANTHROPIC_MODELS = ("claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-20241022")
# Absent, below the smallest budget, equal to it, just above, between budgets, above them all, and
# the largest output any listed model has (above the others' limit: those are refused).
MAX_TOKENS = (None, 500, 1024, 1025, 2000, 2048, 4096, 5000, 8192, 32000, 64000, 64001)
GEMINI_RANGE = (512, 24576)  # the range every listed Gemini 2.5 model takes


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return checked_catalog(ENVIRON)


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "Sum 2 and 2."}]}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def upstream_body(target: Target, body: dict[str, Any]) -> dict[str, Any] | None:
    """The body sent upstream, or None when the gateway refuses the request with a 400."""
    try:
        return build_request(target, validate_request(body), stream=False).body
    except InvalidRequest:
        return None


def assert_anthropic_valid(sent: dict[str, Any], limit: int) -> None:
    assert isinstance(sent["max_tokens"], int) and 1 <= sent["max_tokens"] <= limit, sent["max_tokens"]
    thinking = sent.get("thinking")
    if thinking is not None:
        budget = thinking["budget_tokens"]
        assert thinking["type"] == "enabled"
        assert isinstance(budget, int) and 1024 <= budget < sent["max_tokens"], (budget, sent["max_tokens"])
        # Thinking needs the default temperature and top_p.
        assert "temperature" not in sent and "top_p" not in sent


@pytest.mark.parametrize("model", ANTHROPIC_MODELS)
@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_anthropic_effort_with_any_max_tokens(cat, model, effort, max_tokens, field):
    target = one_target(cat, f"anthropic/{model}")
    limit = target.info.max_output_tokens
    assert limit
    sent = upstream_body(target, chat(reasoning_effort=effort, **{field: max_tokens}, temperature=0.5))
    if max_tokens is not None and max_tokens > limit:
        assert sent is None  # over the model's output limit: a 400 naming the field, never sent
        return
    assert sent is not None
    assert_anthropic_valid(sent, limit)
    if effort in (None, "none"):
        assert "thinking" not in sent
        assert sent["max_tokens"] == (max_tokens or 4096) and sent["temperature"] == 0.5
    if max_tokens is not None and "thinking" in sent and max_tokens > sent["thinking"]["budget_tokens"]:
        assert sent["max_tokens"] == max_tokens  # a client's max_tokens above the budget is kept


@pytest.mark.parametrize("budget", [1, 1023, 1024, 4096, 10000, 31999, 32000, 64000, 10**6])
@pytest.mark.parametrize("max_tokens", [None, 500, 1024, 10000, 10001, 20000, 32000])
def test_anthropic_explicit_budget_kept_within_limits(cat, budget, max_tokens):
    target = one_target(cat, "anthropic/claude-opus-4-20250514")  # max output 32000
    sent = upstream_body(target, chat(thinking={"type": "enabled", "budget_tokens": budget},
                                      reasoning_effort="low", max_tokens=max_tokens))
    assert sent is not None
    assert_anthropic_valid(sent, 32000)
    fits = 1024 <= budget < sent["max_tokens"]
    if fits:
        assert sent["thinking"]["budget_tokens"] == budget  # kept as given, not the effort's 1024
    if budget < 1024:
        assert sent["thinking"]["budget_tokens"] == 1024


def test_anthropic_client_max_tokens_raised_by_the_budget(cat):
    """The documented choice (docs/decisions.md): max_tokens at or under the budget is raised by
    the budget, so the client's allowance for the answer is kept; capped at the model's limit."""
    target = one_target(cat, "anthropic/claude-sonnet-4-20250514")
    sent = upstream_body(target, chat(reasoning_effort="low", max_tokens=500))
    assert sent is not None and sent["max_tokens"] == 1524 and sent["thinking"]["budget_tokens"] == 1024
    sent = upstream_body(target, chat(thinking={"type": "enabled", "budget_tokens": 60000}, max_tokens=8000))
    assert sent is not None and sent["max_tokens"] == 64000 and sent["thinking"]["budget_tokens"] == 60000


def test_explicit_budget_is_not_sent_to_openai(cat):
    target = one_target(cat, "openai/gpt-4o")
    sent = upstream_body(target, chat(thinking={"type": "enabled", "budget_tokens": 5000}, reasoning_effort="high"))
    assert sent is not None and "thinking" not in sent and sent["reasoning_effort"] == "high"


@pytest.mark.parametrize("thinking", [
    "on", {"type": "enabled"}, {"type": "enabled", "budget_tokens": "1024"}, {"type": "enabled", "budget_tokens": 0},
    {"type": "enabled", "budget_tokens": True}, {"type": "sometimes", "budget_tokens": 2048},
])
def test_malformed_thinking_is_a_400(thinking):
    with pytest.raises(InvalidRequest) as caught:
        validate_request(chat(thinking=thinking))
    assert caught.value.param and caught.value.param.startswith("thinking")


def test_disabled_thinking_wins_over_effort(cat):
    target = one_target(cat, "anthropic/claude-sonnet-4-20250514")
    sent = upstream_body(target, chat(thinking={"type": "disabled"}, reasoning_effort="high", max_tokens=500))
    assert sent is not None and "thinking" not in sent and sent["max_tokens"] == 500


@pytest.mark.parametrize("effort", EFFORTS)
@pytest.mark.parametrize("budget", [None, 1, 600, 10000, 30000])
def test_gemini_thinking_budget_in_range(cat, effort, budget):
    target = one_target(cat, "gemini/gemini-2.5-flash")
    thinking = None if budget is None else {"type": "enabled", "budget_tokens": budget}
    sent = upstream_body(target, chat(reasoning_effort=effort, thinking=thinking, max_tokens=2000))
    assert sent is not None
    config = sent.get("generationConfig", {}).get("thinkingConfig")
    if budget is None and effort in (None, "none"):
        assert config is None
        return
    assert config is not None
    lo, hi = GEMINI_RANGE
    assert lo <= config["thinkingBudget"] <= hi
    if budget is not None and lo <= budget <= hi:
        assert config["thinkingBudget"] == budget


@pytest.mark.parametrize("user", ["someone@example.com", "+1 415 555 0100", "u-42"])
def test_anthropic_user_id_is_a_hash(cat, user):
    target = one_target(cat, "anthropic/claude-sonnet-4-20250514")
    sent = upstream_body(target, chat(user=user))
    assert sent is not None
    user_id = sent["metadata"]["user_id"]
    assert user_id == hashlib.sha256(user.encode()).hexdigest()
    assert user not in user_id and "@" not in user_id


# -- client formats: the Responses API and the Anthropic Messages API ----------------------------
@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
@pytest.mark.parametrize("max_output_tokens", [None, 500, 1024, 1025, 2000, 5000, 64000])
def test_responses_ingress_effort_is_valid_for_anthropic(cat, effort, max_output_tokens):
    ingress = cat.ingress["openai-responses"]
    request: dict[str, Any] = {"model": "claude-sonnet-4", "input": "Sum?", "reasoning": {"effort": effort}}
    if max_output_tokens is not None:
        request["max_output_tokens"] = max_output_tokens
    target = one_target(cat, "anthropic/claude-sonnet-4-20250514")
    sent = upstream_body(target, ingress.to_canonical(request))
    assert sent is not None
    assert_anthropic_valid(sent, 64000)
    assert "thinking" in sent


@pytest.mark.parametrize("max_tokens", [500, 1024, 4096, 10000, 12000, 64000])
def test_messages_ingress_keeps_the_clients_budget(cat, max_tokens):
    ingress = cat.ingress["anthropic-messages"]
    request = {"model": "claude-sonnet-4", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Sum?"}],
               "thinking": {"type": "enabled", "budget_tokens": 10000}}
    canonical = ingress.to_canonical(request)
    assert canonical["thinking"] == {"type": "enabled", "budget_tokens": 10000}
    assert canonical["reasoning_effort"] == "high"  # for upstreams that take only an effort
    target = one_target(cat, "anthropic/claude-sonnet-4-20250514")
    sent = upstream_body(target, canonical)
    assert sent is not None
    assert_anthropic_valid(sent, 64000)
    assert sent["thinking"]["budget_tokens"] == 10000
    if max_tokens > 10000:
        assert sent["max_tokens"] == max_tokens
