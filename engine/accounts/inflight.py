"""Load shedding: limits on requests in flight, per API key (`max_in_flight` on the key) and in all
(`limits.max_in_flight`).

A request takes a slot in the admit stage, before any upstream work, and gives it back when it
ends (the pipeline's settle, in a `finally`: a stream when it ends, a client that disconnects
included). Over its key's limit a request gets a 429 `rate_limit` (code `too_many_in_flight`);
over the global limit a 503 `busy`; both with `retry-after: 1` (a slot frees when any request
ends, which cannot be predicted, so the client is told to try again soon).

Counts are per process: each process (each `--workers` worker, each instance) protects itself,
so with N processes a key may have up to N x its limit in flight. A shared count (Redis) would
need a lease per request that a killed process cannot leave behind; a limit meant to protect
the process itself from a burst of slow streams is what per process counts give exactly.
"""

from __future__ import annotations

from ..errors import Busy, RateLimited
from .store import Principal

__all__ = ["InFlight", "Slot"]

RETRY_AFTER = 1.0


class Slot:
    """One admitted request's place; `InFlight.leave` gives it back once, whatever calls it."""

    __slots__ = ("key_id", "taken")

    def __init__(self, key_id: int | None) -> None:
        self.key_id = key_id  # the key whose count it holds; None when only the total was counted
        self.taken = True


class InFlight:
    """Requests in flight in this process, in all and per key (only keys with a limit are counted)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError("limits.max_in_flight must be a whole number of at least 1, or null")
        self.limit = limit
        self.total = 0
        self.by_key: dict[int, int] = {}

    def enter(self, principal: Principal) -> Slot:
        """A slot for this request, or the refusal (RateLimited for its key, Busy for the process)."""
        key_limit, key_id = principal.max_in_flight, principal.key_id
        counted = key_id if key_limit is not None else None
        if key_limit is not None and key_id is not None and self.by_key.get(key_id, 0) >= key_limit:
            raise RateLimited(
                f"This API key already has {key_limit} requests in flight, its limit; send more when one ends.",
                code="too_many_in_flight", retry_after=RETRY_AFTER,
            )
        if self.limit is not None and self.total >= self.limit:
            raise Busy(f"The gateway is serving its limit of {self.limit} requests at once; try again shortly.",
                       retry_after=RETRY_AFTER)
        self.total += 1
        if counted is not None:
            self.by_key[counted] = self.by_key.get(counted, 0) + 1
        return Slot(counted)

    def leave(self, slot: Slot) -> None:
        if not slot.taken:
            return
        slot.taken = False
        self.total -= 1
        if slot.key_id is not None:
            left = self.by_key[slot.key_id] - 1
            if left:
                self.by_key[slot.key_id] = left
            else:
                del self.by_key[slot.key_id]
