"""Response cache: the key's normalization, and the same store tests in memory and, when
GAUD_TEST_REDIS_URL is set, against Redis. Nothing sleeps: the memory cache takes a fake clock,
and for Redis the test moves time by shortening every key's PTTL."""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from engine.accounts.cache import MemoryCache, RedisCache, cache_key, normalize_request

REDIS_URL = os.environ.get("GAUD_TEST_REDIS_URL")
T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]


class Clock:
    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """One event loop per test, so a Redis connection pool lives and closes in the same loop."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


class Harness:
    """A cache plus a way to let time pass for it."""

    def __init__(self, cache: Any, advance: Callable[[float], Awaitable[None]]) -> None:
        self.cache = cache
        self.advance = advance


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, run: Run[Any]) -> Iterator[Harness]:
    if request.param == "memory":
        clock = Clock()

        async def tick(seconds: float) -> None:
            clock.now += seconds

        yield Harness(MemoryCache(max_entries=100, clock=clock), tick)
        return
    if not REDIS_URL:
        pytest.skip("GAUD_TEST_REDIS_URL is not set")
    cache = RedisCache(REDIS_URL, prefix=f"gaud:test:{uuid.uuid4().hex}:")

    async def expire(seconds: float) -> None:
        async for key in cache.client.scan_iter(match=cache.prefix + "*"):
            left = await cache.client.pttl(key)
            if left >= 0 and left <= seconds * 1000:
                await cache.client.delete(key)
            elif left >= 0:
                await cache.client.pexpire(key, left - round(seconds * 1000))

    yield Harness(cache, expire)

    async def cleanup() -> None:
        async for key in cache.client.scan_iter(match=cache.prefix + "*"):
            await cache.client.delete(key)
        await cache.aclose()

    run(cleanup())


RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_miss_then_hit(store: Harness, run: Run[Any]) -> None:
    assert run(store.cache.get("k")) is None
    run(store.cache.set("k", RESPONSE, 60))
    assert run(store.cache.get("k")) == RESPONSE
    assert run(store.cache.get("other")) is None


def test_values_are_copies(store: Harness, run: Run[Any]) -> None:
    value = copy.deepcopy(RESPONSE)
    run(store.cache.set("k", value, 60))
    value["choices"][0]["message"]["content"] = "changed after set"
    got = run(store.cache.get("k"))
    assert got == RESPONSE
    got["choices"][0]["message"]["content"] = "changed after get"
    assert run(store.cache.get("k")) == RESPONSE


def test_entries_expire(store: Harness, run: Run[Any]) -> None:
    run(store.cache.set("short", RESPONSE, 10))
    run(store.cache.set("long", RESPONSE, 100))
    run(store.advance(9.9))
    assert run(store.cache.get("short")) == RESPONSE
    run(store.advance(0.2))
    assert run(store.cache.get("short")) is None
    assert run(store.cache.get("long")) == RESPONSE
    run(store.advance(90))
    assert run(store.cache.get("long")) is None


def test_set_overwrites_and_restarts_ttl(store: Harness, run: Run[Any]) -> None:
    run(store.cache.set("k", {"v": 1}, 10))
    run(store.advance(8))
    run(store.cache.set("k", {"v": 2}, 10))
    run(store.advance(8))
    assert run(store.cache.get("k")) == {"v": 2}


def test_zero_ttl_stores_nothing(store: Harness, run: Run[Any]) -> None:
    run(store.cache.set("k", RESPONSE, 60))
    run(store.cache.set("k", RESPONSE, 0))
    assert run(store.cache.get("k")) is None


def test_memory_lru_eviction(run: Run[Any]) -> None:
    cache = MemoryCache(max_entries=2, clock=Clock())
    run(cache.set("a", {"v": "a"}, 60))
    run(cache.set("b", {"v": "b"}, 60))
    assert run(cache.get("a")) == {"v": "a"}  # a is now the most recent
    run(cache.set("c", {"v": "c"}, 60))
    assert run(cache.get("b")) is None
    assert run(cache.get("a")) == {"v": "a"}
    assert run(cache.get("c")) == {"v": "c"}
    assert len(cache) == 2


def test_memory_default_size_and_bad_size() -> None:
    assert MemoryCache().max_entries == 1000
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_redis_sets_px_and_json(store: Harness, run: Run[Any]) -> None:
    run(store.cache.set("k", RESPONSE, 1.5))
    client = store.cache.client
    assert 1400 < run(client.pttl(store.cache.prefix + "k")) <= 1500
    assert run(client.get(store.cache.prefix + "k")).startswith(b'{"id":"chatcmpl-1"')


def test_redis_errors_are_a_miss(run: Run[Any]) -> None:
    pytest.importorskip("redis")
    cache = RedisCache("redis://127.0.0.1:1/0")  # nothing listens on port 1

    async def go() -> Any:
        await cache.set("k", RESPONSE, 60)
        got = await cache.get("k")
        await cache.aclose()
        return got

    assert run(go()) is None


# --- the key ------------------------------------------------------------------------------------

BODY: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ],
    "temperature": 0,
    "stop": "END",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
}


def key(body: dict[str, Any], scope: str = "user:1") -> str:
    return cache_key(body, scope=scope)


def test_key_is_sha256_hex() -> None:
    k = key(BODY)
    assert len(k) == 64 and int(k, 16) >= 0
    assert key(copy.deepcopy(BODY)) == k


@pytest.mark.parametrize(
    "change",
    [
        {"user": "someone"},
        {"stream": False},
        {"stream_options": {"include_usage": True}},
        {"metadata": {"trace": "abc"}},
        {"cache": {"ttl": 5}},
        {"tags": ["a"]},
        {"service_tier": "auto"},
        {"seed": None},
        {"response_format": None},
        {"stop": ["END"]},
        {"temperature": 0.0},
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                      {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": None}]},
    ],
    ids=",".join,
)
def test_key_ignores_irrelevant_differences(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) == key(BODY)


def test_key_ignores_field_order() -> None:
    reordered = dict(reversed(list(BODY.items())))
    reordered["tools"] = [{"function": {"parameters": {"properties": {}, "type": "object"}, "name": "f"}, "type": "function"}]
    reordered["messages"] = [{"content": m["content"], "role": m["role"]} for m in BODY["messages"]]
    assert key(reordered) == key(BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-y"},
        {"temperature": 0.7},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"stop": ["END", "STOP"]},
        {"seed": 7},
        {"n": 2},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"logit_bias": {"50256": -100}},
        {"reasoning_effort": "high"},
        {"parallel_tool_calls": False},
        {"logprobs": True},
        {"top_logprobs": 2},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}}]},
        {"tools": None},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]},
    ],
    ids=",".join,
)
def test_key_changes_with_relevant_fields(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) != key(BODY)


def test_scope_is_part_of_the_key() -> None:
    assert key(BODY, "user:1") != key(BODY, "user:2")
    assert key(BODY, "user:1") != key(BODY, "shared")


def test_normalize_request_keeps_only_cached_fields() -> None:
    body = {**BODY, "user": "x", "stream": True, "n": None}
    assert normalize_request(body) == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "temperature": 0.0,
        "stop": ["END"],
        "tools": BODY["tools"],
    }
    assert body["stop"] == "END" and body["messages"][1]["content"] == "hi"  # the input is untouched


def test_key_survives_values_orjson_cannot_encode() -> None:
    big = {**BODY, "seed": 2**70}
    assert key(big) == key(copy.deepcopy(big)) != key(BODY)
