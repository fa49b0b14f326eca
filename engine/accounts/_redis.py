"""One way to get a Redis client: from a URL (the caller then owns and closes it) or as given."""

from __future__ import annotations

from typing import Any

__all__ = ["connect"]


def connect(url_or_client: Any) -> tuple[Any, bool]:
    """(client, owned). Imported lazily so the engine runs without the redis package."""
    if isinstance(url_or_client, str):
        import redis.asyncio

        return redis.asyncio.Redis.from_url(url_or_client), True
    return url_or_client, False
