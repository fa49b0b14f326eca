"""Stored replies for client formats that declare `state` (ingress.d/): continuing from one,
keeping a new one, reading and deleting one. An operator opt-in (`responses.store`): it keeps
message contents, a consent separate from `audit.store_content`.

A kept reply gets the gateway's own id (random, so ids never collide across upstreams or users
and cannot be guessed); the stored row holds the whole conversation the model saw plus the reply
(engine.accounts.conversations). A stream's reply is kept when its end event is written, before
that event reaches the client; a stream that ends in an error or a disconnect keeps nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..accounts.conversations import ConversationStore, StoredReply
from ..accounts.store import Principal
from ..errors import InvalidRequest, NotFound
from ..spec.ingress import StateSpec

__all__ = ["Responses", "Turn"]

_OFF = "this gateway does not keep responses (the operator setting `responses.store` is off)"


class Turn:
    """One request to a format with `state`: the request with the stored conversation put
    before its own input, and, when its reply is to be kept, the id it gets and the reply."""

    __slots__ = ("items", "keep", "reply", "reply_id", "request", "saved", "spec", "user_id")

    def __init__(self, spec: StateSpec, request: dict[str, Any], items: list[Any] | None, user_id: int | None,
                 keep: bool) -> None:
        self.spec = spec
        self.request = request
        self.items = items
        self.user_id = user_id
        self.keep = keep and items is not None and user_id is not None
        self.reply_id = uuid.uuid4().hex if self.keep else None
        self.reply: dict[str, Any] | None = None
        self.saved = False

    def done(self, reply: dict[str, Any]) -> None:
        """The whole reply (a stream writer's `on_reply`)."""
        self.reply = reply


class Responses:
    """Stored replies; `store` None: the setting is off, and asking for one is refused."""

    def __init__(self, store: ConversationStore | None) -> None:
        self.store = store

    async def begin(self, spec: StateSpec, raw: dict[str, Any], principal: Principal) -> Turn:
        """The request with the conversation it continues from (a 400 when storage is off, a 404
        when there is no such reply of this user's)."""
        previous = raw.get(spec.continue_from)
        items = spec.items(raw.get(spec.input))
        keep = self.store is not None and raw.get(spec.store) is not False
        if previous is None:
            return Turn(spec, raw, items, principal.user_id, keep)
        if self.store is None:
            raise InvalidRequest(f"{spec.continue_from} cannot be used: {_OFF}. Send the whole conversation in "
                                 f"`{spec.input}`, or ask the operator to set responses.store: true.",
                                 param=spec.continue_from, code="response_storage_off")
        if not isinstance(previous, str):
            raise InvalidRequest(f"{spec.continue_from}: Input should be a valid string", param=spec.continue_from)
        stored = await self._load(principal, previous)
        if stored is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param=spec.continue_from,
                           code="previous_response_not_found")
        if items is not None:
            output = stored.response.get(spec.output)
            items = [*stored.input, *(output if isinstance(output, list) else []), *items]
            raw = {**raw, spec.input: items}
        return Turn(spec, raw, items, principal.user_id, keep)

    async def save(self, turn: Turn) -> None:
        """Keep the turn's reply, once, if it is to be kept."""
        if turn.saved or not turn.keep or turn.reply is None or self.store is None:
            return
        turn.saved = True
        assert turn.user_id is not None and turn.items is not None
        reply_id = str(turn.reply.get("id"))
        await asyncio.to_thread(self.store.save, turn.user_id, reply_id, turn.items, turn.reply)

    async def saving(self, pieces: AsyncIterator[bytes], turn: Turn) -> AsyncIterator[bytes]:
        """A stream's pieces; the reply is kept before the piece that ends the stream goes out."""
        try:
            async for piece in pieces:
                if turn.reply is not None and not turn.saved:
                    await self.save(turn)
                yield piece
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def retrieve(self, spec: StateSpec, principal: Principal, reply_id: str) -> dict[str, Any]:
        """GET: the user's stored reply, or a 404 (also for another user's)."""
        if self.store is None:
            raise _off(reply_id)
        stored = await self._load(principal, reply_id)
        if stored is None:
            raise _missing(reply_id)
        return stored.response

    async def delete(self, spec: StateSpec, principal: Principal, reply_id: str) -> dict[str, Any]:
        """DELETE: the deletion receipt, or a 404 (also for another user's)."""
        if self.store is None:
            raise _off(reply_id)
        if principal.user_id is None or not await asyncio.to_thread(self.store.delete, principal.user_id, reply_id):
            raise _missing(reply_id)
        deleted: dict[str, Any] = spec.deleted(None, {"id": reply_id})
        return deleted

    async def _load(self, principal: Principal, reply_id: str) -> StoredReply | None:
        if self.store is None or principal.user_id is None:
            return None
        return await asyncio.to_thread(self.store.load, principal.user_id, reply_id)


def _off(reply_id: str) -> NotFound:
    return NotFound(f"No response '{reply_id}': {_OFF}.", param="response_id", code="response_storage_off")


def _missing(reply_id: str) -> NotFound:
    return NotFound(f"No response with id '{reply_id}' found.", param="response_id", code="response_not_found")
