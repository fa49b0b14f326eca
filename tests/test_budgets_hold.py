"""Budgets hold for every endpoint and every script (issue 18, item 3), through a real
`gaud-engine serve` with auth on and the openai SDK as the client: 50 concurrent embeddings
requests, and 50 concurrent chat requests in Japanese, against daily budgets that pay for about
five each. Total recorded cost (the audit rows) may exceed a budget by at most one request's cost;
every refusal is 429 insufficient_quota naming what is used, what is reserved and what the refused
request was estimated at. Once with the in-process budgets, once with the budgets in Redis
(GAUD_TEST_REDIS_URL).

The fake upstream reports the usage a tokenizer would: one token per Japanese character (what the
issue measured), so an estimate of four characters a token reserves a quarter of the real cost."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from engine.accounts.store import Store

from .conftest import RunningGateway, provider_env, spec_tree, start_gateway

M = 1_000_000
N = 50
REDIS = os.environ.get("GAUD_TEST_REDIS_URL")

# Chat: claude-sonnet-4 ($3/M in, $15/M out), a 600-character Japanese prompt, max_tokens 24.
JAPANESE = ("潮汐表を見て明日の朝の満潮の時刻を教えてください。" * 24)[:600]
CHAT_COST = (600 * 3 + 24 * 15) / M  # what the upstream reports: 600 prompt tokens, 24 completion
CHAT_ESTIMATE = (601 * 3 + 24 * 15) / M  # a token a character, plus one
# Embeddings: text-embedding-3-large ($0.13/M), four inputs of 400 Japanese characters.
INPUTS = [("港の案内と潮汐表" * 50)] * 4
EMBED_COST = 4 * 400 * 0.13 / M
EMBED_ESTIMATE = 4 * 401 * 0.13 / M

REFUSAL = re.compile(
    r"The daily budget of \$(?P<limit>[\d.]+) for user '(?P<user>\w+)' (?P<why>is spent|cannot cover this request): "
    r"\$(?P<used>[\d.]+) used, \$(?P<reserved>[\d.]+) reserved by requests in flight, "
    r"\$(?P<estimate>[\d.]+) estimated for this request\.$"
)


def _redis_url() -> str:
    if not REDIS:
        pytest.skip("needs GAUD_TEST_REDIS_URL")
    import redis

    url = REDIS.rsplit("/", 1)[0] + "/13"  # a database of its own: flushed here, used by no other test
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(params=["memory", "redis"])
def budgeted(request, fake_upstream_server, upstream, tmp_path):
    """A gateway with auth on and two users whose daily budgets pay for 5.5 requests each."""
    env = {
        "GAUD_SPECS_DIR": str(spec_tree(tmp_path, retry="false", fallback="false")),
        "GAUD_AUTH_ENABLED": "true",
        **provider_env(fake_upstream_server.url),
    }
    if request.param == "redis":
        env["GAUD_REDIS_URL"] = _redis_url()
    store = Store(f"sqlite:///{tmp_path / 'gaud.db'}")
    store.migrate()
    keys = {
        "chatty": store.create_key("chatty", budget_daily=5.5 * CHAT_COST)[0],
        "embedder": store.create_key("embedder", budget_daily=5.5 * EMBED_COST)[0],
    }
    store.close()
    running = start_gateway(env, tmp_path / "gateway.log")
    yield running, keys
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(10)


def fire(url: str, key: str, call: str, kwargs: dict[str, Any]) -> list[Any]:
    """N concurrent requests with the SDK; each result or the error it raised."""

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as client:
            create = client.embeddings.create if call == "embeddings" else client.chat.completions.create
            return await asyncio.gather(
                *(create(**kwargs, extra_headers={"x-request-id": f"{call}-{i:02d}"}) for i in range(N)),
                return_exceptions=True,
            )

    return asyncio.run(burst())


def recorded(running: RunningGateway, db: Path, user: str) -> list[dict[str, Any]]:
    """The user's audit rows, once the gateway has stopped (every record is flushed by then)."""
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(20) == 0
    store = Store(f"sqlite:///{db}")
    try:
        return store.audit_records(user=user)
    finally:
        store.close()


def check(results: list[Any], records: list[dict[str, Any]], *, user: str, cost: float, estimate: float) -> None:
    budget = 5.5 * cost
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert 1 <= len(served) <= 6, f"{len(served)} served"
    assert len(served) + len(refused) == N
    for error in refused:
        assert isinstance(error, openai.RateLimitError), repr(error)
        body = error.response.json()["error"]
        assert (body["type"], body["code"]) == ("insufficient_quota", "budget_exceeded")
        found = REFUSAL.match(body["message"])
        assert found, body["message"]
        limit, used, reserved, asked = (float(found[k]) for k in ("limit", "used", "reserved", "estimate"))
        assert found["user"] == user and limit == pytest.approx(budget, abs=1e-8)
        assert asked == pytest.approx(estimate, abs=1e-8)  # the refused request's own estimate
        assert used + reserved + asked > limit  # the numbers say why it was refused
        assert used <= len(served) * cost + 1e-8 and reserved <= len(served) * estimate + 1e-8
    assert len(records) == N
    statuses = sorted(r["status"] for r in records)
    assert statuses == sorted([200] * len(served) + [429] * len(refused))
    total = sum(r["cost"] for r in records)
    assert total == pytest.approx(len(served) * cost)
    assert total <= budget + cost  # the guarantee: at most one request's cost over


def test_concurrent_embeddings_cannot_overrun_a_budget(budgeted, upstream, tmp_path):
    running, keys = budgeted
    reply = {"object": "list", "model": "text-embedding-3-large",
             "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5]} for i in range(len(INPUTS))],
             "usage": {"prompt_tokens": 1600, "total_tokens": 1600}}
    for _ in range(N):
        upstream.reply(body=json.dumps(reply).encode(), delay=0.2)  # the served ones overlap
    results = fire(running.url, keys["embedder"], "embeddings", {"model": "text-embedding-3-large", "input": INPUTS})
    served = [r for r in results if not isinstance(r, BaseException)]
    assert all(r.usage.prompt_tokens == 1600 for r in served)
    assert len(upstream.requests) == len(served)  # a refused request never reaches the provider
    check(results, recorded(running, tmp_path / "gaud.db", "embedder"), user="embedder", cost=EMBED_COST,
          estimate=EMBED_ESTIMATE)


def test_concurrent_japanese_chat_cannot_overrun_a_budget(budgeted, upstream, tmp_path):
    running, keys = budgeted
    reply = {"id": "msg_budget", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
             "content": [{"type": "text", "text": "明日の満潮は六時十二分です。"}], "stop_reason": "end_turn",
             "stop_sequence": None, "usage": {"input_tokens": 600, "output_tokens": 24}}
    for _ in range(N):
        upstream.reply(body=json.dumps(reply).encode(), delay=0.2)
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": JAPANESE}], "max_tokens": 24}
    results = fire(running.url, keys["chatty"], "chat", body)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert all(r.usage.prompt_tokens == 600 for r in served)
    assert len(upstream.requests) == len(served)
    check(results, recorded(running, tmp_path / "gaud.db", "chatty"), user="chatty", cost=CHAT_COST,
          estimate=CHAT_ESTIMATE)


def test_a_request_without_max_tokens_is_told_its_estimate_is_over_the_whole_budget(budgeted, upstream):
    """Without max_tokens the reservation assumes the model's output limit (up to 4096 tokens):
    on a small budget the refusal says so rather than calling the budget spent."""
    running, keys = budgeted
    client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=keys["chatty"], max_retries=0, timeout=20)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="claude-sonnet-4", messages=[{"role": "user", "content": "こんにちは"}])
    message = refused.value.response.json()["error"]["message"]
    # The budget: 5.5 x $0.00216. The estimate: "こんにちは" is 5 tokens, plus one; no max_tokens, so 4096 out.
    assert round(5.5 * CHAT_COST, 8) == 0.01188 and (5 + 1) * 3 + 4096 * 15 == 61458
    assert message == (
        "The daily budget of $0.01188 for user 'chatty' cannot cover this request: $0.00 used, $0.00 "
        "reserved by requests in flight, $0.061458 estimated for this request (more than the whole budget)."
    )
    assert upstream.requests == []
