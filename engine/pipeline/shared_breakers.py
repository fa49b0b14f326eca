"""Circuit breakers several gateway instances share through Redis.

Each instance keeps its local breakers and publishes transitions to one Redis hash; before
planning a request it pulls the hash and adopts any breaker another instance opened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from ..accounts._redis import connect
from .breaker import OPEN, Breaker, BreakerBoard

__all__ = ["SharedBreakerBoard"]


class SharedBreakerBoard(BreakerBoard):
    """Breakers whose transitions are published to Redis and adopted by every instance.

    Times are wall-clock (`time.time`) so instances agree on when a breaker opened.
    """

    def __init__(
        self, url_or_client: Any, *, failures: int = 5, cooldown: float = 30.0, key: str = "gaud:breakers",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(failures=failures, cooldown=cooldown, clock=clock)
        self.redis, _ = connect(url_or_client)
        self.key = key
        self._pending: set[asyncio.Task[Any]] = set()

    def _new(self, deployment: str) -> Breaker:
        """Breakers that publish their transitions (and tell the listener of their own; a state
        adopted from another instance in `sync` is that instance's to report)."""
        breaker = _PublishingBreaker(self.failures, self.cooldown, self.clock)
        breaker.board, breaker.name = self, deployment
        breaker.notify = partial(self._changed, deployment)
        return breaker

    def publish(self, name: str, breaker: Breaker) -> None:
        state = orjson.dumps({"state": breaker.state, "opened_at": breaker.opened_at, "failures": breaker.consecutive_failures})
        task = asyncio.get_running_loop().create_task(self.redis.hset(self.key, name, state))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def sync(self) -> None:
        """Adopt what other instances published: a breaker opened elsewhere opens here too."""
        remote = await self.redis.hgetall(self.key)
        for raw_name, raw in remote.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            data = orjson.loads(raw)
            breaker = self[name]
            if data["state"] == OPEN and (breaker.state != OPEN or data["opened_at"] > breaker.opened_at):
                breaker.state, breaker.opened_at = OPEN, float(data["opened_at"])
                breaker.consecutive_failures = int(data["failures"])
            elif data["state"] == "closed" and breaker.state == OPEN and breaker.opened_at < self.clock() - self.cooldown:
                breaker.state, breaker.consecutive_failures = "closed", 0

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush()
        await self.redis.aclose()


class _PublishingBreaker(Breaker):
    board: SharedBreakerBoard
    name: str

    def record_success(self) -> None:
        was = self.state
        super().record_success()
        if was != self.state:
            self.board.publish(self.name, self)

    def record_failure(self) -> None:
        was = self.state
        super().record_failure()
        if was != self.state:
            self.board.publish(self.name, self)
