"""The keys page: every API key and each user's spend against their budgets; create and revoke keys,
set budgets."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...accounts.admin import key_actor, perform
from ...accounts.key_usage import key_usage
from ...accounts.store import KEY_PREFIX
from ...errors import GatewayError, NotFound
from . import queries
from .context import Dashboard
from .forms import FormError, money_field
from .sessions import Viewer

__all__ = ["LOOKUP", "create_key", "keys_data", "keys_notice", "keys_page", "new_key_fields", "revoke_key",
           "set_budgets"]

log = logging.getLogger("gaud.dashboard")

LOOKUP = re.compile(r"[0-9a-f]{12}")  # a key's public part, after KEY_PREFIX


def keys_data(ui: Dashboard) -> dict[str, Any]:
    """Active keys first, newest first, each with its user's spend and its last use; and every
    user's spend (in a thread: it queries the database)."""
    now = ui.clock()
    keys = sorted(key_usage(ui.store, now=now), key=lambda u: (u.key.revoked_at is not None, -u.key.created_at))
    return {"keys": keys, "users": queries.spend_by_user(ui.engine, now=now)}


def keys_notice(request: Request) -> str | None:
    """What the redirect after a change came to say (`?revoked=<lookup>` or `?budgets=1`)."""
    revoked = request.query_params.get("revoked", "")
    if LOOKUP.fullmatch(revoked):
        return f"Key {KEY_PREFIX}{revoked}… revoked. Requests with it are refused from now on."
    if request.query_params.get("budgets") == "1":
        return "Budgets updated. Running gateways apply them within a minute."
    return None


async def keys_page(ui: Dashboard, request: Request, viewer: Viewer, status: int = 200, **extra: Any) -> Response:
    context = {"notice": keys_notice(request), "created": None, "error": None, "form": {}, **extra}
    data = await asyncio.to_thread(keys_data, ui)
    return ui.render(request, "keys.html", viewer, status, **data, **context)


def new_key_fields(form: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The user and the `Store.create_key` fields (role, budgets) of the new-key form; FormError if invalid."""
    user = form.get("user", "").strip()
    role = form.get("role", "member")
    if not user or len(user) > 200 or not user.isprintable():
        raise FormError(400, "A user name (1 to 200 printable characters) is required.")
    if role not in ("admin", "member"):
        raise FormError(400, "The role must be admin or member.")
    fields: dict[str, Any] = {"role": role}
    for name in ("budget_daily", "budget_monthly"):
        fields[name] = money_field(form, name)
    return user, fields


async def create_key(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    try:
        user, fields = new_key_fields(form)
    except FormError as exc:
        return await keys_page(ui, request, viewer, exc.status, error=exc.message, form=form)
    try:
        created = await asyncio.to_thread(_change, ui, viewer, "keys", "create", None, {"user": user, **fields})
    except GatewayError as exc:
        return await keys_page(ui, request, viewer, exc.status, error=exc.message, form=form)
    key, info = created["key"], await asyncio.to_thread(ui.store.key_info, created["id"])
    assert info is not None, "a key just created"
    log.info("dashboard: %s created a %s key %s%s for user %s", viewer.principal.user_name, fields["role"],
             KEY_PREFIX, info.lookup, user)
    # Shown in this response only: never stored, never put in a URL.
    return await keys_page(ui, request, viewer, 201, created={"key": key, "info": info})


async def revoke_key(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    lookup = request.path_params["lookup"]
    if not LOOKUP.fullmatch(lookup):
        return ui.error(request, viewer, 404, "No such key.")
    try:
        await asyncio.to_thread(_change, ui, viewer, "keys", "revoke", lookup, {})
    except NotFound:
        return await keys_page(ui, request, viewer, 404, error=f"No active key {KEY_PREFIX}{lookup}….")
    log.info("dashboard: %s revoked key %s%s", viewer.principal.user_name, KEY_PREFIX, lookup)
    return ui.redirect(request, f"/keys?{urlencode({'revoked': lookup})}")


async def set_budgets(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    user = form.get("user", "")
    try:
        daily, monthly = money_field(form, "budget_daily"), money_field(form, "budget_monthly")
        if daily is None and monthly is None:
            raise FormError(400, "Give a daily or a monthly budget (blank leaves it as it is).")
    except FormError as exc:
        return await keys_page(ui, request, viewer, exc.status, error=exc.message)
    try:
        budgets = {name: value for name, value in (("budget_daily", daily), ("budget_monthly", monthly)) if value is not None}
        await asyncio.to_thread(_change, ui, viewer, "users", "update", user, budgets)
    except NotFound:
        return await keys_page(ui, request, viewer, 404, error="No such user.")
    log.info("dashboard: %s set budgets of %s: daily %s, monthly %s", viewer.principal.user_name, user, daily, monthly)
    return ui.redirect(request, "/keys?budgets=1")


def _change(ui: Dashboard, viewer: Viewer, resource: str, verb: str, target: str | None, fields: dict[str, Any]) -> Any:
    """An operation of engine.accounts.admin (as the CLI and the admin API run them), recorded as
    made from the dashboard with the viewer's key."""
    actor = key_actor(ui.store, viewer.principal, via="ui:")
    return perform(ui.store, resource, verb, actor=actor, target=target, fields=fields)
