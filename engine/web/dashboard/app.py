"""The admin dashboard: server-rendered pages under /ui, an admin key to log in, no JavaScript.

Logging in exchanges an admin API key for a random session id in an HttpOnly, SameSite=Strict
cookie; the key itself is never stored or sent back. Sessions live in the database (only a
SHA-256 of each id is stored), so every worker process and instance using it accepts them. They
last 8 hours and end early at logout, or when the key they were opened with is revoked or its
user is no longer an admin.
Every form that changes state carries a per-session token and must come from this origin.

This module wires the routes; the pages live in overview.py, requests.py, keys.py, health.py,
signin.py and login.py, each a set of handlers taking the `Dashboard` (context.py) that holds their collaborators.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...accounts.store import Store
from ..asgi import BodyDeadlines
from ..asgi_headers import ResponseHeaders
from .context import Dashboard
from .health import health
from .keys import create_key, keys_page, revoke_key, set_budgets
from .login import login, login_page, logout
from .overview import overview
from .requests import request_detail, requests_page
from .sessions import SESSION_COOKIE, Sessions
from .signin import signin_page, signout, start_signin

__all__ = ["SECURITY_HEADERS", "SESSION_COOKIE", "Sessions", "dashboard_app", "routes"]

SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin keeps the Referer on our own form posts (one of the CSRF checks) and off elsewhere.
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        (
            b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            b"frame-ancestors 'none'; base-uri 'none'"
        ),
    ),
]


async def stylesheet(ui: Dashboard, request: Request) -> Response:
    return Response(ui.stylesheet, media_type="text/css", headers={"cache-control": "max-age=300"})


def routes(ui: Dashboard) -> list[Route]:
    """Every page (`ui.page`: admins only) and form post (`ui.action`: an admin's checked form)."""
    return [
        Route("/", ui.page(overview), methods=["GET"]),
        Route("/login", ui.public(login_page), methods=["GET"]),
        Route("/login", ui.public(login), methods=["POST"]),
        Route("/logout", ui.action(logout), methods=["POST"]),
        Route("/keys", ui.page(keys_page), methods=["GET"]),
        Route("/keys", ui.action(create_key), methods=["POST"]),
        Route("/keys/{lookup}/revoke", ui.action(revoke_key), methods=["POST"]),
        Route("/budgets", ui.action(set_budgets), methods=["POST"]),
        Route("/requests", ui.page(requests_page), methods=["GET"]),
        Route("/requests/{request_id:path}", ui.page(request_detail), methods=["GET"]),
        Route("/health", ui.page(health), methods=["GET"]),
        Route("/signin", ui.page(signin_page), methods=["GET"]),
        Route("/signin/{provider}", ui.action(start_signin), methods=["POST"]),
        Route("/signout/{provider}", ui.action(signout), methods=["POST"]),
        Route("/static/dashboard.css", ui.public(stylesheet), methods=["GET"]),
    ]


def dashboard_app(
    store: Store,
    gateway: Any,
    *,
    auth_enabled: bool = True,
    sessions: Sessions | None = None,
    clock: Callable[[], float] = time.time,
    body_deadlines: BodyDeadlines | None = None,
) -> Starlette:
    """The dashboard as an ASGI app, to mount at /ui: `Mount("/ui", app=dashboard_app(...))`.

    `gateway` is the running Gateway (its catalog, routes and circuit breakers are shown).
    With `auth_enabled` false the gateway serves everyone as the local admin, and so does this:
    no login, and every page says so. `body_deadlines` bound the time to send a form (server.body_timeout).
    """
    if sessions is None:
        sessions = Sessions(store, clock=clock)
    ui = Dashboard(store, gateway, auth_enabled=auth_enabled, sessions=sessions, clock=clock)
    ui.body_deadlines = body_deadlines

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "Method not allowed." if status == 405 else "No such page."
        return ui.error(request, None, status, message)

    app = Starlette(
        routes=routes(ui),
        middleware=[Middleware(ResponseHeaders, headers=lambda scope: SECURITY_HEADERS)],
        exception_handlers={HTTPException: not_found},
    )
    app.state.sessions = sessions
    app.state.dashboard = ui
    return app
