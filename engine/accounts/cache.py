"""Response cache for non-streaming chat completions: the key, and stores in memory or in Redis.

The key is a hash of the request's normalized generation parameters plus a `scope` (a user id,
or "shared"), so users never see each other's cached replies. Fields that do not change what the
model generates (user, stream, metadata, tags...) are left out, and spellings that mean the same
request hash the same: `stop: "x"` and `["x"]`, a string content and a single text part, an
absent field and a null one, `temperature: 1` and `1.0`. Which requests may be cached at all
(e.g. only temperature 0) is the caller's policy, not this module's.

Values are JSON objects (a chat completion response) and are stored encoded, so every `get`
returns a fresh copy that the caller may mutate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson

__all__ = ["CACHED_FIELDS", "MemoryCache", "RedisCache", "ResponseCache", "cache_key", "normalize_request"]

log = logging.getLogger("gaud.cache")

# The request fields that shape the response; everything else is ignored by the key.
CACHED_FIELDS = (
    "model",
    "messages",
    "tools",
    "tool_choice",
    "response_format",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "reasoning_effort",
    "thinking",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
)
_FLOAT_FIELDS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})

# Bump when normalization changes, so old entries are not served for a different request.
_KEY_VERSION = 1


def _message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    out = {k: v for k, v in message.items() if v is not None}
    if isinstance(out.get("content"), str):
        out["content"] = [{"type": "text", "text": out["content"]}]
    return out


def normalize_request(body: dict[str, Any]) -> dict[str, Any]:
    """The part of a chat completion request that the cache key hashes."""
    out: dict[str, Any] = {}
    for name in CACHED_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if name == "messages" and isinstance(value, list):
            value = [_message(m) for m in value]
        elif name == "stop" and isinstance(value, str):
            value = [value]
        elif name in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def cache_key(body: dict[str, Any], *, scope: str) -> str:
    """sha256 hex of the normalized request and the scope."""
    payload = {"v": _KEY_VERSION, "scope": scope, "request": normalize_request(body)}
    try:
        encoded = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer past 64 bits; same body, same path
        encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode()
    return hashlib.sha256(encoded).hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any], ttl: float) -> None: ...

    async def aclose(self) -> None:
        """Release what the cache holds (a Redis connection); called once at shutdown."""
        ...


class MemoryCache:
    """LRU of at most `max_entries`, each entry living `ttl` seconds by the injectable clock."""

    def __init__(self, max_entries: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, data = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return orjson.loads(data)  # type: ignore[no-any-return]

    async def set(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store `value` for `ttl` seconds; a ttl of 0 or less removes the key instead."""
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self.clock() + ttl, orjson.dumps(value))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        return None


class RedisCache:
    """Entries in Redis (SET with PX), orjson-encoded, under `prefix`.

    A cache must not take the gateway down with it: Redis errors are logged and treated as a
    miss (get) or skipped (set). Eviction beyond the TTL is Redis's maxmemory-policy.
    """

    def __init__(self, url_or_client: Any, prefix: str = "gaud:cache:") -> None:
        import redis.exceptions  # lazy: the engine imports without the redis package

        from ._redis import connect

        self.client, self._owns_client = connect(url_or_client)
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = await self.client.get(self.prefix + key)
        except self._errors as exc:
            log.warning("response cache get failed: %s", exc)
            return None
        if data is None:
            return None
        try:
            return orjson.loads(data)  # type: ignore[no-any-return]
        except orjson.JSONDecodeError:
            log.warning("response cache entry %s is not JSON; ignoring it", key)
            return None

    async def set(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store `value` for `ttl` seconds; a ttl of 0 or less removes the key instead."""
        try:
            if ttl <= 0:
                await self.client.delete(self.prefix + key)
            else:
                await self.client.set(self.prefix + key, orjson.dumps(value), px=max(1, round(ttl * 1000)))
        except self._errors as exc:
            log.warning("response cache set failed: %s", exc)

    async def aclose(self) -> None:
        """Close the connection pool if this cache created it from a URL."""
        if self._owns_client:
            await self.client.aclose()
