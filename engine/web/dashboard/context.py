"""What every dashboard page reads: `Dashboard` holds the collaborators (store, gateway, sessions,
templates) and the helpers pages share: render a template, redirect, find who is looking, and wrap a
handler so it only runs for an admin (`page`) or for an admin's valid form post (`action`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...accounts.auth import LOCAL_USER
from ...accounts.store import KEY_PREFIX, Principal, Store
from ..asgi import BodyDeadlines
from . import queries
from .charts import format_count, format_money
from .forms import FormError, read_form, same_origin
from .sessions import SESSION_COOKIE, Session, Sessions, Viewer

__all__ = ["ActionHandler", "Dashboard", "Endpoint", "PageHandler", "PublicHandler", "SignInFlow", "templates"]

log = logging.getLogger("gaud.dashboard")

HERE = Path(__file__).parent

Endpoint = Callable[[Request], Awaitable[Response]]
PublicHandler = Callable[["Dashboard", Request], Awaitable[Response]]
PageHandler = Callable[["Dashboard", Request, Viewer], Awaitable[Response]]
ActionHandler = Callable[["Dashboard", Request, Viewer, dict[str, str]], Awaitable[Response]]
#: An upstream sign-in started from the dashboard: {"state", "lines", "error", "task"}; never a token.
SignInFlow = dict[str, Any]


def _fmt_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _fmt_share(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:,.1f} s"


def _limit(value: float | None) -> str:
    return "none" if value is None else f"{value:,.0f}"


def _quote(value: str) -> str:
    """A request id as one path segment (a client's id may hold `/`, `?` or `#`)."""
    return quote(value, safe="")


def templates() -> jinja2.Environment:
    """The page templates, autoescaped, with the dashboard's filters (money, count, time, share, ms, limit, quote)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=format_money, count=format_count, time=_fmt_time, share=_fmt_share, ms=_fmt_ms, limit=_limit,
                       quote=_quote)
    env.globals.update(KEY_PREFIX=KEY_PREFIX)
    return env


class Dashboard:
    """The collaborators of the dashboard's pages and the helpers they share.

    `gateway` is the running Gateway (its catalog, routes, circuit breakers and credentials). With
    `auth_enabled` false every viewer is the local admin: no login, no sessions.
    """

    def __init__(
        self,
        store: Store,
        gateway: Any,
        *,
        auth_enabled: bool,
        sessions: Sessions,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.engine = store.engine
        self.gateway = gateway
        self.auth_enabled = auth_enabled
        self.sessions = sessions
        self.clock = clock
        self.templates = templates()
        self.stylesheet = (HERE / "static" / "dashboard.css").read_bytes()
        self.local_csrf = secrets.token_urlsafe(32)  # the forms' token when auth is off (no sessions)
        self.signins: dict[str, SignInFlow] = {}  # provider -> its latest sign-in flow in this process
        self.body_deadlines: BodyDeadlines | None = None  # how long a form may take to arrive

    # -- responses --------------------------------------------------------------------------------
    @staticmethod
    def base(request: Request) -> str:
        """Where the dashboard is mounted (e.g. `/ui`), without a trailing slash."""
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/")

    def render(self, request: Request, template: str, viewer: Viewer | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            base=self.base(request), viewer=viewer, auth_enabled=self.auth_enabled, now=self.clock(),
            active=template.split(".")[0], **context,
        )
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, viewer: Viewer | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", viewer, status, message=message)

    def redirect(self, request: Request, path: str) -> RedirectResponse:
        """A 303 to `path` under the dashboard (`/`, `/keys?budgets=1`, ...)."""
        return RedirectResponse(f"{self.base(request)}{path}", status_code=303)

    def to_login(self, request: Request) -> RedirectResponse:
        return self.redirect(request, "/login")

    # -- who is looking ---------------------------------------------------------------------------
    def live_session(self, session_id: str) -> Session | None:
        """The session, while it lasts and its key is still an unrevoked admin key (in a thread)."""
        session = self.sessions.get(session_id)
        if session is None or session.principal.key_id is None:
            return session
        active, role = queries.session_key_status(self.engine, session.principal.key_id)
        if not active or role != "admin":
            log.info("dashboard session of %s ended: its key was revoked or is no longer admin",
                     session.principal.user_name)
            self.sessions.drop(session_id)
            return None
        return session

    async def viewer_of(self, request: Request) -> Viewer | None:
        if not self.auth_enabled:
            return Viewer(Principal(user_id=None, user_name=LOCAL_USER, role="admin"), self.local_csrf)
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        session = await asyncio.to_thread(self.live_session, session_id)
        if session is None:
            return None
        return Viewer(session.principal, session.csrf, session_id)

    # -- handlers as endpoints --------------------------------------------------------------------
    def public(self, handler: PublicHandler) -> Endpoint:
        """A page anyone may load (the login page)."""

        async def endpoint(request: Request) -> Response:
            return await handler(self, request)

        return endpoint

    def page(self, handler: PageHandler) -> Endpoint:
        """A page for admins: without a session, the login page."""

        async def endpoint(request: Request) -> Response:
            viewer = await self.viewer_of(request)
            if viewer is None:
                return self.to_login(request)
            return await handler(self, request, viewer)

        return endpoint

    def action(self, handler: ActionHandler) -> Endpoint:
        """A form post that changes state: an admin session, this origin, the session's token."""

        async def endpoint(request: Request) -> Response:
            viewer = await self.viewer_of(request)
            if viewer is None:
                return self.to_login(request)
            form = await self.checked_form(request, viewer)
            if isinstance(form, Response):
                return form
            return await handler(self, request, viewer, form)

        return endpoint

    async def checked_form(self, request: Request, viewer: Viewer) -> dict[str, str] | Response:
        """The posted form, or the error page when it is cross-origin, unreadable or has a stale token."""
        if not same_origin(request):
            log.warning("dashboard: refused a cross-origin %s %s", request.method, request.url.path)
            return self.error(request, viewer, 403, "Refused: this form was not sent from this site.")
        try:
            form = await read_form(request, self.body_deadlines)
        except FormError as exc:
            return self.error(request, viewer, exc.status, exc.message)
        if not hmac.compare_digest(form.get("csrf", "").encode(), viewer.csrf.encode()):
            return self.error(request, viewer, 403,
                              "Refused: the form's token is missing or stale. Reload the page and try again.")
        return form
