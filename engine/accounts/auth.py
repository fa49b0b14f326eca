"""Who is calling: the gateway API key in `Authorization: Bearer` or `x-api-key`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

from ..errors import AuthenticationFailed, PermissionDenied
from .store import Principal, Store

__all__ = ["LOCAL_USER", "Authenticator"]

LOCAL_USER = "local"


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


class Authenticator:
    """Maps request headers to a Principal. With auth disabled every caller is the local user."""

    def __init__(self, store: Store, *, enabled: bool, local: Principal | None = None) -> None:
        self.store = store
        self.enabled = enabled
        self.local = local or Principal(user_id=None, user_name=LOCAL_USER, role="admin")
        # Verifications under way, by SHA-256 of the key: concurrent requests with one key not yet
        # cached share a single argon2 check instead of running one each.
        self._verifying: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def principal(self, headers: Mapping[str, str]) -> Principal:
        if not self.enabled:
            return self.local
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "No API key: send it as 'Authorization: Bearer sk-gaud-...' or 'x-api-key'.", code="missing_api_key"
            )
        principal = self.store.cached_principal(key) or await self._verify(key)
        if principal is None:
            raise AuthenticationFailed("Invalid or revoked API key.")
        return principal

    async def _verify(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        pending = self._verifying.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.store.verify_key, key))
            self._verifying[digest] = pending
            pending.add_done_callback(lambda done: self._finished(digest, done))
        # shield: one caller going away does not cancel the check the others wait on.
        return await asyncio.shield(pending)

    def _finished(self, digest: bytes, done: asyncio.Future[Principal | None]) -> None:
        self._verifying.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure nobody awaits any more is not logged as lost

    async def admin(self, headers: Mapping[str, str]) -> Principal:
        principal = await self.principal(headers)
        if not principal.is_admin:
            raise PermissionDenied("This route needs an admin key.", code="admin_required")
        return principal
