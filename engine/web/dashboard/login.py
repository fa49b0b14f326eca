"""Logging in to the dashboard with an admin API key, and out again.

Logging in exchanges the key for a new session id in an HttpOnly, SameSite=Strict cookie; the key
itself is never stored or sent back.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from ...accounts.store import Principal
from .context import Dashboard
from .forms import FormError, read_form, same_origin
from .sessions import SESSION_COOKIE, Viewer

__all__ = ["login", "login_page", "logout"]

log = logging.getLogger("gaud.dashboard")


async def login_page(ui: Dashboard, request: Request) -> Response:
    if not ui.auth_enabled or await ui.viewer_of(request) is not None:
        return ui.redirect(request, "/")
    return ui.render(request, "login.html", None)


async def login(ui: Dashboard, request: Request) -> Response:
    if not ui.auth_enabled:
        return ui.redirect(request, "/")
    try:
        principal = await admin_of_login_form(ui, request)
    except FormError as exc:
        return ui.render(request, "login.html", None, exc.status, error=exc.message)
    return await open_session(ui, request, principal)


async def admin_of_login_form(ui: Dashboard, request: Request) -> Principal:
    """Who the posted key belongs to; FormError unless the form is ours and the key an admin's."""
    if not same_origin(request):
        raise FormError(403, "Refused: this form was not sent from this site.")
    form = await read_form(request, ui.body_deadlines)
    key = form.get("key", "").strip()
    principal = None
    if key:
        principal = await asyncio.to_thread(ui.store.verify_key, key)
    if principal is None:
        log.warning("dashboard: failed login from %s", request.client.host if request.client else "?")
        raise FormError(401, "Invalid, expired or revoked key.")
    if not principal.is_admin:
        log.warning("dashboard: user %s tried to log in without an admin key", principal.user_name)
        raise FormError(
            403, f"The key of user {principal.user_name} is not an admin key. The dashboard needs an admin key."
        )
    return principal


async def open_session(ui: Dashboard, request: Request, principal: Principal) -> Response:
    """A new session for `principal` (the browser's old one, if any, ends) and its cookie."""
    await asyncio.to_thread(ui.sessions.drop, request.cookies.get(SESSION_COOKIE))  # a new id on every login
    session_id, _ = await asyncio.to_thread(ui.sessions.create, principal)
    log.info("dashboard: %s logged in", principal.user_name)
    response = ui.redirect(request, "/")
    response.set_cookie(
        SESSION_COOKIE, session_id, max_age=int(ui.sessions.seconds), path=ui.base(request) or "/",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )
    return response


async def logout(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    await asyncio.to_thread(ui.sessions.drop, viewer.session_id)
    response = ui.to_login(request) if ui.auth_enabled else ui.redirect(request, "/")
    response.delete_cookie(SESSION_COOKIE, path=ui.base(request) or "/", httponly=True, samesite="strict")
    return response
