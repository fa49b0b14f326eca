"""What a request reserves before its call: the token estimate for any script (engine.pipeline.tokens),
the price put on it (Gateway.estimate_cost, chat and embeddings), and the refusal's wording, the
same from the in-process budgets and from Redis (GAUD_TEST_REDIS_URL)."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

import pytest

from engine.accounts.budgets import Budgets
from engine.accounts.shared import RedisBudgets
from engine.accounts.store import Principal
from engine.errors import BudgetExceeded
from engine.pipeline.gateway import Gateway
from engine.pipeline.routing import Plan, PlannedTarget
from engine.pipeline.stages import CHAT, EMBEDDINGS
from engine.pipeline.tokens import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW,
    estimate_input_tokens,
    estimate_prompt_tokens,
    weigh,
)
from engine.spec.routes import Backoff, Policy

from .conftest import one_target

M = 1_000_000
REDIS = os.environ.get("GAUD_TEST_REDIS_URL")


def prompt(*contents: Any) -> int:
    return estimate_prompt_tokens({"messages": [{"role": "user", "content": c} for c in contents]})


# -- the token estimate ----------------------------------------------------------------------------


def test_ascii_is_four_characters_a_token_as_before():
    assert prompt("Summarise the tide table for Brest harbour tomorrow morning, please!") == 68 // 4 + 1
    assert prompt("") == 1
    assert prompt("abc", "d") == 1 + 1  # counted over the whole prompt, not rounded per message
    assert weigh("hello") == 5


@pytest.mark.parametrize(
    "text",
    [
        "日本語の文章を要約してください。",  # Japanese: kana and kanji
        "请把下面这段中文总结一下。",  # Chinese
        "한국어 문장을 요약해 주세요",  # Korean (the spaces are ASCII)
        "Сократи этот текст, пожалуйста",  # Cyrillic
        "ما هو الطقس اليوم",  # Arabic
        "ထမင်းစားပြီးပြီလား",  # Burmese
    ],
)
def test_every_character_outside_ascii_is_a_token(text):
    non_ascii = sum(1 for ch in text if ord(ch) > 127)
    ascii_chars = len(text) - non_ascii
    assert prompt(text) == non_ascii + ascii_chars // 4 + 1
    assert prompt(text * 100) >= 100 * non_ascii  # never the ~4x shortfall of characters / 4


def test_mixed_text_weighs_each_part():
    # "café au lait": 11 ASCII characters and one é.
    assert weigh("café au lait") == 11 + 4
    assert prompt("café au lait") == (11 + 4) // 4 + 1
    # Japanese in an English prompt: 38 ASCII characters (9 tokens) and 7 others (7 tokens).
    text = "Translate this to English, thank you: 今日は晴れです"
    assert sum(ord(c) > 127 for c in text) == 7 and prompt(text) == (len(text) - 7) // 4 + 7 + 1


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("😀", 2),  # outside the BMP: two tokens
        ("👍🏽", 4),  # a thumb and a skin tone, both outside the BMP
        ("🇫🇷", 4),  # a flag is two regional indicators
        ("👨\u200d👩\u200d👧", 3 * 2 + 2),  # three people joined by two zero-width joiners
        ("❤️", 2),  # U+2764 in the BMP plus a variation selector
        ("𠀀𠀁", 4),  # CJK Extension B, outside the BMP like emoji
    ],
)
def test_emoji_and_other_characters_outside_the_bmp_count_double(text, tokens):
    assert weigh(text) == 4 * tokens
    assert prompt(text) == tokens + 1


def test_lone_surrogates_are_counted_not_refused():
    assert weigh("\ud800x") == 4 + 1


def test_images_are_reserved_at_their_largest_unless_low_detail():
    def image(detail: str | None) -> dict[str, Any]:
        url: dict[str, Any] = {"url": "https://example.com/a.png"}
        if detail is not None:
            url["detail"] = detail
        return {"type": "image_url", "image_url": url}

    assert prompt([image("low")]) == IMAGE_TOKENS_LOW + 1
    for detail in (None, "auto", "high"):
        assert prompt([image(detail)]) == IMAGE_TOKENS + 1
    assert prompt([{"type": "text", "text": "两张图"}, image("low"), image(None)]) == 3 + IMAGE_TOKENS_LOW + IMAGE_TOKENS + 1
    assert IMAGE_TOKENS >= 1445  # OpenAI's largest high-detail image (85 + 8 tiles x 170)


def test_tool_calls_and_tools_are_weighed_like_text():
    ascii_only = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}]}]}
    cjk = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city": "東京都千代田区"}'}}]}]}
    assert estimate_prompt_tokens(cjk) >= estimate_prompt_tokens(ascii_only) + 7 - 2
    tools = [{"type": "function", "function": {"name": "天気", "description": "東京の天気を調べる" * 20, "parameters": {}}}]
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": "hi"}], "tools": tools}) > 9 * 20


def test_random_text_in_any_script_is_never_estimated_below_a_token_a_character_outside_ascii():
    rng = random.Random(18)
    ranges = [(0x20, 0x7E), (0xC0, 0x24F), (0x400, 0x4FF), (0x600, 0x6FF), (0x1000, 0x109F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]
    for _ in range(300):
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 200)))
        non_ascii = sum(ord(c) > 127 for c in text)
        astral = sum(ord(c) > 0xFFFF for c in text)
        assert prompt(text) == (len(text) - non_ascii) // 4 + non_ascii + astral + 1
        assert estimate_input_tokens([text]) == prompt(text)


def test_embeddings_inputs():
    assert estimate_input_tokens(["tide", "harbour"]) == 2 + 2
    assert estimate_input_tokens(["潮汐表"]) == 3 + 1
    assert estimate_input_tokens([[1, 2, 3], [4]]) == 4  # token ids count themselves
    assert estimate_input_tokens(["a", 5]) == 1 + 1  # a lone token id next to a text (was a TypeError)


# -- what the estimate costs -------------------------------------------------------------------------


def plan_for(catalog, *models: str, estimated_tokens: int = 0) -> Plan:
    return Plan(alias=models[0], route=None, targets=[PlannedTarget(one_target(catalog, m)) for m in models],
                policy=Policy(None, None, Backoff()), facts={"estimated_tokens": estimated_tokens})


@pytest.fixture
def gateway(catalog):
    return Gateway(catalog, upstream=None)  # type: ignore[arg-type]  # nothing is sent


def test_embeddings_reserve_their_input_at_the_model_price(gateway, catalog):
    body = {"model": "text-embedding-3-large", "input": ["潮汐表" * 1000, "tide table " * 100]}
    plan = plan_for(catalog, "openai/text-embedding-3-large", estimated_tokens=1)  # the chat-shaped routing estimate
    tokens = 3000 + 1 + 1100 // 4 + 1
    assert EMBEDDINGS.tokens(body, plan) == tokens
    assert EMBEDDINGS.estimate_cost(gateway, body, plan) == pytest.approx(tokens * 0.13 / M)


def test_chat_reserves_at_the_dearest_candidate(gateway, catalog):
    body = {"model": "x", "messages": [{"role": "user", "content": "東京" * 500}], "max_tokens": 100}
    prompt_tokens = estimate_prompt_tokens(body)
    assert prompt_tokens == 1001
    cheap_first = plan_for(catalog, "gemini/gemini-2.5-flash", "anthropic/claude-sonnet-4-20250514",
                           estimated_tokens=prompt_tokens)
    sonnet = (prompt_tokens * 3 + 100 * 15) / M
    assert CHAT.estimate_cost(gateway, body, cheap_first) == pytest.approx(sonnet)
    alone = plan_for(catalog, "gemini/gemini-2.5-flash", estimated_tokens=prompt_tokens)
    assert CHAT.estimate_cost(gateway, body, alone) == pytest.approx((prompt_tokens * 0.30 + 100 * 2.5) / M)


def test_chat_without_max_tokens_reserves_the_output_limit_up_to_4096(gateway, catalog):
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    plan = plan_for(catalog, "anthropic/claude-sonnet-4-20250514", estimated_tokens=1)
    assert CHAT.estimate_cost(gateway, body, plan) == pytest.approx((1 * 3 + 4096 * 15) / M)


# -- the refusal, worded alike by both budget stores -----------------------------------------------


def _budgets(kind: str) -> Any:
    if kind == "memory":
        return Budgets(None)
    if not REDIS:
        pytest.skip("needs GAUD_TEST_REDIS_URL")
    return RedisBudgets(REDIS, None, prefix=f"gaud:test:estimates:{uuid.uuid4().hex}:")


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_refusal_states_used_reserved_and_the_estimate(kind):
    ann = Principal(user_id=7, user_name="ann", role="member", budget_daily=0.01)

    async def scenario() -> list[str]:
        budgets = _budgets(kind)
        messages = []
        try:
            with pytest.raises(BudgetExceeded) as refused:  # no max_tokens: the output limit alone is over
                await budgets.reserve(ann, 0.0618)
            messages.append(refused.value.message)
            first = await budgets.reserve(ann, 0.004)
            await budgets.reserve(ann, 0.004)
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(ann, 0.0025)
            messages.append(refused.value.message)
            # The first request cost more than it reserved (Redis settles in a task: awaited here).
            if kind == "redis":
                await budgets.settle_now(first, 0.0105)
            else:
                budgets.settle(first, 0.0105)
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(ann, 0.0001)
            messages.append(refused.value.message)
        finally:
            if kind == "redis":
                await budgets.redis.delete(*await budgets.redis.keys(f"{budgets.prefix}*"))
                await budgets.aclose()
        return messages

    assert asyncio.run(scenario()) == [
        ("The daily budget of $0.01 for user 'ann' cannot cover this request: $0.00 used, $0.00 reserved by requests"
         " in flight, $0.0618 estimated for this request (more than the whole budget)."),
        ("The daily budget of $0.01 for user 'ann' cannot cover this request: $0.00 used, $0.008 reserved by requests"
         " in flight, $0.0025 estimated for this request."),
        ("The daily budget of $0.01 for user 'ann' is spent: $0.0105 used, $0.004 reserved by requests in flight,"
         " $0.0001 estimated for this request."),
    ]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_monthly_budget_is_named_when_it_is_the_one_refusing(kind):
    bo = Principal(user_id=8, user_name="bo", role="member", budget_daily=5.0, budget_monthly=0.5)

    async def scenario() -> str:
        budgets = _budgets(kind)
        try:
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(bo, 0.75)
            return refused.value.message
        finally:
            if kind == "redis":
                await budgets.redis.delete(*await budgets.redis.keys(f"{budgets.prefix}*"))
                await budgets.aclose()

    assert asyncio.run(scenario()) == (
        "The monthly budget of $0.50 for user 'bo' cannot cover this request: $0.00 used, $0.00 reserved by requests"
        " in flight, $0.75 estimated for this request (more than the whole budget)."
    )
