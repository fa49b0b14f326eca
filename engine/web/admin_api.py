"""The admin HTTP API for users, teams, keys and their trail: each route maps onto an operation of
engine.accounts.admin (the ones the CLI runs), through one handler.

Admin keys only: a member key gets 403 `admin_required`; no key, or a revoked, expired or unknown
one, 401 (engine.accounts.auth). POST and PATCH take a JSON object of at most `ADMIN_MAX_BODY`
bytes (revoke: none, or `{}`); every method also takes fields from the query string. A field the operation does not take is a 400
naming it. The actor of the events is the admin key's prefix (`sk-gaud-<id>`), or `local` with
auth off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..accounts import admin
from ..accounts.auth import Authenticator
from ..accounts.store import Principal, Store, key_shaped
from ..errors import GatewayError, InvalidRequest
from ..pipeline.stages import parse_json
from .asgi import BodyLimit, error_headers, read_body

__all__ = ["ADMIN_MAX_BODY", "ADMIN_ROUTES", "admin_routes"]

#: The largest body the admin routes read (a key's or a user's fields).
ADMIN_MAX_BODY = 64 * 1024

#: (method, path, resource, verb): the routes of the operations (engine.accounts.admin.OPERATIONS).
ADMIN_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("GET", "/admin/users", "users", "list"),
    ("POST", "/admin/users", "users", "create"),
    ("GET", "/admin/users/{name}", "users", "show"),
    ("PATCH", "/admin/users/{name}", "users", "update"),
    ("DELETE", "/admin/users/{name}", "users", "delete"),
    ("GET", "/admin/keys", "keys", "list"),
    ("POST", "/admin/keys", "keys", "create"),
    ("GET", "/admin/keys/{lookup}", "keys", "show"),
    ("PATCH", "/admin/keys/{lookup}", "keys", "update"),
    ("DELETE", "/admin/keys/{lookup}", "keys", "delete"),
    ("POST", "/admin/keys/{lookup}/revoke", "keys", "revoke"),
    ("GET", "/admin/teams", "teams", "list"),
    ("POST", "/admin/teams", "teams", "create"),
    ("GET", "/admin/teams/{name}", "teams", "show"),
    ("PATCH", "/admin/teams/{name}", "teams", "update"),
    ("DELETE", "/admin/teams/{name}", "teams", "delete"),
    ("GET", "/admin/events", "events", "list"),
)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, headers=headers, media_type="application/json")


def admin_routes(store: Store, authenticator: Authenticator, body: BodyLimit) -> list[Route]:
    """One starlette Route per path, each method dispatched to its operation."""
    by_path: dict[str, dict[str, tuple[str, str]]] = {}
    for method, path, resource, verb in ADMIN_ROUTES:
        by_path.setdefault(path, {})[method] = (resource, verb)
    return [Route(path, _handler(store, authenticator, body, verbs), methods=list(verbs))
            for path, verbs in by_path.items()]


def _handler(store: Store, authenticator: Authenticator, body: BodyLimit,
             verbs: dict[str, tuple[str, str]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            principal = await authenticator.admin(request.headers)
            resource, verb = verbs[request.method]
            operation = admin.OPERATIONS[resource][verb]
            fields: dict[str, Any] = dict(request.query_params)
            if request.method in ("POST", "PATCH") and (operation.fields or _has_body(request)):
                fields = {**fields, **parse_json(await read_body(request.headers, request.receive, body))}
            target = next(iter(request.path_params.values()), None)
            if resource == "keys" and target is not None and key_shaped(target):
                raise InvalidRequest("Name the key by its id (sk-gaud- and 12 characters), not the whole key: a URL "
                                     "is written to logs.", param="lookup", code="key_in_url")
            result = await asyncio.to_thread(_perform, store, principal, resource, verb, target, fields)
        except GatewayError as exc:
            return _json(exc.to_openai(), exc.status, error_headers(exc))
        return _json(result, 201 if operation.created else 200)

    return handle


def _has_body(request: Request) -> bool:
    """Whether a request without fields to give came with a body anyway (`{}` gives none; any
    field in it is refused, not ignored)."""
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


def _perform(store: Store, principal: Principal, resource: str, verb: str, target: str | None,
             fields: dict[str, Any]) -> Any:
    return admin.perform(store, resource, verb, actor=admin.key_actor(store, principal), target=target, fields=fields)
