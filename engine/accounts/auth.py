"""Who is calling: the gateway API key in `Authorization: Bearer` or `x-api-key`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ..errors import AuthenticationFailed, PermissionDenied
from .store import Principal, Store, key_shaped

__all__ = ["LOCAL_USER", "Authenticator"]

LOCAL_USER = "local"


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


class Authenticator:
    """Maps request headers to a Principal. With auth disabled every caller is the local user.

    Every request reads its key's row (Store.verify_key, in a thread): no verified-key cache, so a
    key revoked, expired or changed by any process or instance is refused or changed at once.
    """

    def __init__(self, store: Store, *, enabled: bool, local: Principal | None = None) -> None:
        self.store = store
        self.enabled = enabled
        self.local = local or Principal(user_id=None, user_name=LOCAL_USER, role="admin")

    async def principal(self, headers: Mapping[str, str]) -> Principal:
        if not self.enabled:
            return self.local
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "No API key: send it as 'Authorization: Bearer sk-gaud-...' or 'x-api-key'.", code="missing_api_key"
            )
        principal = await asyncio.to_thread(self.store.verify_key, key) if key_shaped(key) else None
        if principal is None:
            raise AuthenticationFailed("Invalid, expired or revoked API key.")
        return principal

    async def admin(self, headers: Mapping[str, str]) -> Principal:
        principal = await self.principal(headers)
        if not principal.is_admin:
            raise PermissionDenied("This route needs an admin key.", code="admin_required")
        return principal
