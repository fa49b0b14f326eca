"""The admin dashboard: server-rendered pages under /ui, an admin key to log in, no JavaScript.

Logging in exchanges an admin API key for a random session id in an HttpOnly, SameSite=Strict
cookie; the key itself is never stored or sent back. Sessions live in the database (only a
SHA-256 of each id is stored), so every worker process and instance using it accepts them. They
last 8 hours and end early at logout, or when the key they were opened with is revoked or its
user is no longer an admin.
Every form that changes state carries a per-session token and must come from this origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ...accounts.auth import LOCAL_USER
from ...accounts.budgets import day_start
from ...accounts.store import KEY_PREFIX, Principal, Store
from ..asgi_headers import ResponseHeaders
from . import queries
from .charts import format_count, format_money, stacked_bars

__all__ = ["SESSION_COOKIE", "Sessions", "dashboard_app"]

log = logging.getLogger("gaud.dashboard")

HERE = Path(__file__).parent
SESSION_COOKIE = "gaud_dashboard"
SESSION_SECONDS = 8 * 3600
MAX_FORM_BYTES = 16 * 1024
LOOKUP = re.compile(r"[0-9a-f]{12}")
HOUR, DAY = 3600, 86400

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


# -- sessions -------------------------------------------------------------------------------------


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Sessions:
    """Session id -> who logged in, in the store's database, shared by every process using it.

    Only a SHA-256 of each id is stored. Calls are synchronous (the dashboard runs them in a
    thread). `limit` caps the live sessions: creating one past it drops the oldest.
    """

    def __init__(
        self,
        store: Store,
        *,
        seconds: float = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
        limit: int = 10_000,
    ) -> None:
        self.store = store
        self.seconds = seconds
        self.clock = clock
        self.limit = limit

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()

    def create(self, principal: Principal) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(principal, secrets.token_urlsafe(32), now + self.seconds)
        self.store.save_dashboard_session(
            self._digest(session_id), principal, session.csrf, now=now, expires=session.expires, limit=self.limit
        )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        found = self.store.dashboard_session(self._digest(session_id), now=self.clock())
        return Session(*found) if found is not None else None

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self.store.drop_dashboard_session(self._digest(session_id))

    def count(self) -> int:
        """Live sessions, in every process."""
        return self.store.count_dashboard_sessions(now=self.clock())


@dataclass
class Viewer:
    """Who is looking at a page, and the token their forms must carry."""

    principal: Principal
    csrf: str
    session_id: str | None = None


# -- request helpers ------------------------------------------------------------------------------


class FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form body (no multipart: the dashboard's forms are plain fields)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError(415, "Forms must be sent as application/x-www-form-urlencoded.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, "The form is too large.")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "The form could not be read.") from None
    return {name: values[0] for name, values in parsed.items()}


def same_origin(request: Request) -> bool:
    """Origin (else Referer), when the browser sent one, names this host. `null` never does."""
    host = request.headers.get("host", "").lower()
    for header in ("origin", "referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        if value == "null":
            return False
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host
    return True


def _money_field(form: dict[str, str], name: str) -> float | None:
    raw = form.get(name, "").strip().lstrip("$")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(400, f"{name.replace('_', ' ').capitalize()} must be a number of USD.") from None
    if not math.isfinite(value) or value < 0:
        raise FormError(400, f"{name.replace('_', ' ').capitalize()} must be a non-negative number of USD.")
    return value


def _fmt_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _fmt_share(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=format_money, count=format_count, time=_fmt_time, share=_fmt_share)
    env.globals.update(KEY_PREFIX=KEY_PREFIX)
    return env


# -- the app --------------------------------------------------------------------------------------


def dashboard_app(
    store: Store,
    gateway: Any,
    *,
    auth_enabled: bool = True,
    sessions: Sessions | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The dashboard as an ASGI app, to mount at /ui: `Mount("/ui", app=dashboard_app(...))`.

    `gateway` is the running Gateway (its catalog, routes and circuit breakers are shown).
    With `auth_enabled` false the gateway serves everyone as the local admin, and so does this:
    no login, and every page says so.
    """
    env = _templates()
    if sessions is None:
        sessions = Sessions(store, clock=clock)
    local_csrf = secrets.token_urlsafe(32)  # the forms' token when auth is off (no sessions)
    stylesheet = (HERE / "static" / "dashboard.css").read_bytes()
    engine = store.engine

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def render(request: Request, template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            base=base(request), viewer=viewer, auth_enabled=auth_enabled, now=clock(), active=template.split(".")[0],
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def to_login(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{base(request)}/login", status_code=303)

    def live_session(session_id: str) -> Session | None:
        """The session, while it lasts and its key is still an unrevoked admin key (in a thread)."""
        session = sessions.get(session_id)
        if session is None or session.principal.key_id is None:
            return session
        active, role = queries.session_key_status(engine, session.principal.key_id)
        if not active or role != "admin":
            log.info("dashboard session of %s ended: its key was revoked or is no longer admin",
                     session.principal.user_name)
            sessions.drop(session_id)
            return None
        return session

    async def viewer_of(request: Request) -> Viewer | None:
        if not auth_enabled:
            return Viewer(Principal(user_id=None, user_name=LOCAL_USER, role="admin"), local_csrf)
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        session = await asyncio.to_thread(live_session, session_id)
        if session is None:
            return None
        return Viewer(session.principal, session.csrf, session_id)

    Handler = Callable[[Request, Viewer], Awaitable[Response]]

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page for admins: without a session, the login page."""

        async def endpoint(request: Request) -> Response:
            viewer = await viewer_of(request)
            if viewer is None:
                return to_login(request)
            return await handler(request, viewer)

        return endpoint

    def action(handler: Callable[[Request, Viewer, dict[str, str]], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """A form post that changes state: an admin session, this origin, the session's token."""

        async def endpoint(request: Request) -> Response:
            viewer = await viewer_of(request)
            if viewer is None:
                return to_login(request)
            if not same_origin(request):
                log.warning("dashboard: refused a cross-origin %s %s", request.method, request.url.path)
                return render(request, "error.html", viewer, 403, message="Refused: this form was not sent from this site.")
            try:
                form = await read_form(request)
            except FormError as exc:
                return render(request, "error.html", viewer, exc.status, message=exc.message)
            if not hmac.compare_digest(form.get("csrf", "").encode(), viewer.csrf.encode()):
                return render(request, "error.html", viewer, 403,
                              message="Refused: the form's token is missing or stale. Reload the page and try again.")
            return await handler(request, viewer, form)

        return endpoint

    # -- login ------------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        if not auth_enabled or await viewer_of(request) is not None:
            return RedirectResponse(f"{base(request)}/", status_code=303)
        return render(request, "login.html", None)

    async def login(request: Request) -> Response:
        if not auth_enabled:
            return RedirectResponse(f"{base(request)}/", status_code=303)
        if not same_origin(request):
            return render(request, "login.html", None, 403, error="Refused: this form was not sent from this site.")
        try:
            form = await read_form(request)
        except FormError as exc:
            return render(request, "login.html", None, exc.status, error=exc.message)
        key = form.get("key", "").strip()
        principal = None
        if key:
            principal = store.cached_principal(key) or await asyncio.to_thread(store.verify_key, key)
        if principal is None:
            log.warning("dashboard: failed login from %s", request.client.host if request.client else "?")
            return render(request, "login.html", None, 401, error="Invalid or revoked key.")
        if not principal.is_admin:
            log.warning("dashboard: user %s tried to log in without an admin key", principal.user_name)
            return render(request, "login.html", None, 403,
                          error=f"The key of user {principal.user_name} is not an admin key. The dashboard needs an admin key.")
        await asyncio.to_thread(sessions.drop, request.cookies.get(SESSION_COOKIE))  # a new id on every login
        session_id, _ = await asyncio.to_thread(sessions.create, principal)
        log.info("dashboard: %s logged in", principal.user_name)
        response = RedirectResponse(f"{base(request)}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session_id, max_age=int(sessions.seconds), path=base(request) or "/",
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        await asyncio.to_thread(sessions.drop, viewer.session_id)
        response = to_login(request) if auth_enabled else RedirectResponse(f"{base(request)}/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=base(request) or "/", httponly=True, samesite="strict")
        return response

    # -- overview ---------------------------------------------------------------------------------
    def usage_section(title: str, start: float, bucket: int, count: int, fmt: str, label_every: int) -> dict[str, Any]:
        by_user = queries.time_series(engine, by="user", start=start, bucket_seconds=bucket, buckets=count)
        by_model = queries.time_series(engine, by="model", start=start, bucket_seconds=bucket, buckets=count)
        starts = by_user.bucket_starts

        def chart(name: str, data: dict[str, list[float]], money: bool) -> Any:
            return stacked_bars(name, starts, data, money=money, bucket_format=fmt, label_every=label_every)

        requests = sum(sum(v) for v in by_user.requests.values())
        cost = sum(sum(v) for v in by_user.cost.values())
        return {
            "title": title,
            "requests": requests,
            "cost": cost,
            "charts": [
                chart("Cost per user", by_user.cost, True),
                chart("Requests per user", by_user.requests, False),  # type: ignore[arg-type]
                chart("Cost per model", by_model.cost, True),
                chart("Requests per model", by_model.requests, False),  # type: ignore[arg-type]
            ],
        }

    def overview_data(now: float) -> dict[str, Any]:
        hour_start = math.floor(now / HOUR) * HOUR - 23 * HOUR
        week_start = day_start(now) - 6 * DAY
        days = usage_section("Last 7 days, per day (UTC)", week_start, DAY, 7, "%a %d", 1)
        hours = usage_section("Last 24 hours, per hour (UTC)", hour_start, HOUR, 24, "%H:00", 3)
        rows = queries.totals(engine, since=week_start)
        return {"sections": [days, hours], "totals": rows, "since": week_start,
                "errors": sum(r.errors for r in rows)}

    async def overview(request: Request, viewer: Viewer) -> Response:
        data = await asyncio.to_thread(overview_data, clock())
        return render(request, "overview.html", viewer, **data)

    # -- keys and budgets -------------------------------------------------------------------------
    def keys_data() -> dict[str, Any]:
        keys = sorted(store.list_keys(), key=lambda k: (k.revoked_at is not None, -k.created_at))
        return {"keys": keys, "users": queries.spend_by_user(engine, now=clock())}

    async def keys_page(request: Request, viewer: Viewer, status: int = 200, **extra: Any) -> Response:
        notice = None
        revoked = request.query_params.get("revoked", "")
        if LOOKUP.fullmatch(revoked):
            notice = f"Key {KEY_PREFIX}{revoked}… revoked. Requests with it are refused from now on."
        elif request.query_params.get("budgets") == "1":
            notice = "Budgets updated. Running gateways apply them within a minute."
        context = {"notice": notice, "created": None, "error": None, "form": {}, **extra}
        data = await asyncio.to_thread(keys_data)
        return render(request, "keys.html", viewer, status, **data, **context)

    async def create_key(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        user = form.get("user", "").strip()
        role = form.get("role", "member")
        try:
            if not user or len(user) > 200 or not user.isprintable():
                raise FormError(400, "A user name (1 to 200 printable characters) is required.")
            if role not in ("admin", "member"):
                raise FormError(400, "The role must be admin or member.")
            fields: dict[str, Any] = {"role": role}
            for name in ("budget_daily", "budget_monthly"):
                fields[name] = _money_field(form, name)
        except FormError as exc:
            return await keys_page(request, viewer, exc.status, error=exc.message, form=form)
        key, info = await asyncio.to_thread(store.create_key, user, **fields)
        log.info("dashboard: %s created a %s key %s%s for user %s", viewer.principal.user_name, role, KEY_PREFIX,
                 info.lookup, user)
        # Shown in this response only: never stored, never put in a URL.
        return await keys_page(request, viewer, 201, created={"key": key, "info": info})

    async def revoke_key(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        lookup = request.path_params["lookup"]
        if not LOOKUP.fullmatch(lookup):
            return render(request, "error.html", viewer, 404, message="No such key.")
        revoked = await asyncio.to_thread(store.revoke_key, lookup)
        if not revoked:
            return await keys_page(request, viewer, 404, error=f"No active key {KEY_PREFIX}{lookup}….")
        log.info("dashboard: %s revoked key %s%s", viewer.principal.user_name, KEY_PREFIX, lookup)
        return RedirectResponse(f"{base(request)}/keys?{urlencode({'revoked': lookup})}", status_code=303)

    async def set_budgets(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        user = form.get("user", "")
        try:
            daily, monthly = _money_field(form, "budget_daily"), _money_field(form, "budget_monthly")
            if daily is None and monthly is None:
                raise FormError(400, "Give a daily or a monthly budget (blank leaves it as it is).")
            role = await asyncio.to_thread(queries.user_role, engine, user)
            if role is None:
                raise FormError(404, "No such user.")
        except FormError as exc:
            return await keys_page(request, viewer, exc.status, error=exc.message)
        await asyncio.to_thread(store.ensure_user, user, role=role, budget_daily=daily, budget_monthly=monthly)
        log.info("dashboard: %s set budgets of %s: daily %s, monthly %s", viewer.principal.user_name, user, daily, monthly)
        return RedirectResponse(f"{base(request)}/keys?budgets=1", status_code=303)

    # -- health -----------------------------------------------------------------------------------
    def health_data() -> dict[str, Any]:
        catalog = gateway.catalog
        router = gateway.router
        providers = [
            {"name": name, "description": spec.description, "missing": spec.missing_env(), "models": len(spec.models)}
            for name, spec in sorted(catalog.providers.items())
        ]
        routes: list[dict[str, Any]] = []
        warnings: list[str] = []
        deployments: dict[str, set[str]] = {}
        for alias, route in sorted(router.table.routes.items()):
            candidates = []
            for c in route.candidates:
                name = f"{c.provider}/{c.model}"
                spec = catalog.providers.get(c.provider)
                status = "not loaded" if spec is None else ("no credentials" if spec.missing_env() else "ready")
                if spec is None:
                    warnings.append(f"route {alias}: candidate {name}: its provider is not loaded")
                elif spec.missing_env():
                    warnings.append(f"route {alias}: candidate {name}: no credentials (set {', '.join(spec.missing_env())})")
                deployments.setdefault(name, set()).add(alias)
                candidates.append({
                    "name": name, "weight": c.weight, "timeout": c.timeout, "status": status,
                    "when": c.when.expression if c.when is not None else None, "rpm": c.rpm, "tpm": c.tpm,
                })
            routes.append({"alias": alias, "strategy": route.strategy, "description": route.description,
                           "candidates": candidates, "cache": route.cache})
        breakers = router.breakers.states()
        for name in breakers:
            deployments.setdefault(name, set())
        rows = []
        for name in sorted(deployments):
            snapshot = breakers.get(name)
            latency = router.latency.get(name)
            rows.append({
                "name": name,
                "aliases": sorted(deployments[name]),
                "state": snapshot["state"] if snapshot else "closed",
                "seen": snapshot is not None,
                "failures": snapshot["consecutive_failures"] if snapshot else 0,
                "in_flight": router.in_flight.get(name, 0),
                "latency_ms": latency * 1000 if latency is not None else None,
            })
        table = router.table
        return {
            "providers": providers, "routes": routes, "deployments": rows,
            "problems": [str(p) for p in catalog.problems], "warnings": warnings,
            "defaults": {"strategy": table.default_strategy, "breaker_failures": table.breaker_failures,
                         "breaker_cooldown": table.breaker_cooldown},
            "spec_root": str(catalog.root),
        }

    async def health(request: Request, viewer: Viewer) -> Response:
        refresh = request.query_params.get("refresh", "")
        seconds = int(refresh) if refresh.isdigit() and 5 <= int(refresh) <= 3600 else None
        sync_error = None
        sync = getattr(gateway.router.breakers, "sync", None)
        if sync is not None:  # breaker states shared between instances: fetch the latest first
            try:
                await sync()
            except Exception as exc:  # noqa: BLE001 - whatever Redis raised, the page shows this instance's view
                log.warning("dashboard: could not fetch shared breaker states: %s", exc)
                sync_error = f"Shared breaker states could not be fetched ({type(exc).__name__}); showing this instance's view."
        return render(request, "health.html", viewer, refresh=seconds, sync_error=sync_error, **health_data())

    # -- upstream sign-in: the same flows as `gaud-engine login`, started from here ---------------
    signins: dict[str, dict[str, Any]] = {}  # provider -> {"state", "lines", "error"}; no tokens

    def signin_providers() -> list[Any]:
        return [spec for spec in gateway.catalog.providers.values() if spec.auth is not None and spec.auth.signs_in]

    async def signin_page(request: Request, viewer: Viewer) -> Response:
        manager = gateway.credentials
        rows = []
        for spec in signin_providers():
            signed_in = await manager.signed_in(spec) if manager is not None else False
            rows.append({"name": spec.name, "type": spec.auth.type, "signed_in": signed_in,
                         "flow": signins.get(spec.name)})
        running = any(r["flow"] and r["flow"]["state"] == "running" for r in rows)
        return render(request, "signin.html", viewer, providers=rows, available=manager is not None,
                      refresh=3 if running else None)

    async def start_signin(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        manager = gateway.credentials
        spec = next((s for s in signin_providers() if s.name == request.path_params["provider"]), None)
        if manager is None or spec is None:
            return render(request, "error.html", viewer, 404, message="No such provider with a sign-in flow.")
        if (signins.get(spec.name) or {}).get("state") == "running":
            return RedirectResponse(f"{base(request)}/signin", status_code=303)
        flow: dict[str, Any] = {"state": "running", "lines": [], "error": None}
        signins[spec.name] = flow

        async def run() -> None:
            try:
                # The flow prints where to go and which code to enter: shown on the page, no tokens.
                await manager.login(spec, echo=flow["lines"].append, open_url=lambda url: flow["lines"].append(url))
                flow["state"] = "done"
            except Exception as exc:  # noqa: BLE001 - the page shows why; the gateway keeps serving
                flow["state"], flow["error"] = "failed", getattr(exc, "message", type(exc).__name__)

        flow["task"] = asyncio.get_running_loop().create_task(run())
        log.info("dashboard: %s started the sign-in to %s", viewer.principal.user_name, spec.name)
        return RedirectResponse(f"{base(request)}/signin", status_code=303)

    async def signout(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
        manager = gateway.credentials
        spec = next((s for s in signin_providers() if s.name == request.path_params["provider"]), None)
        if manager is None or spec is None:
            return render(request, "error.html", viewer, 404, message="No such provider with a sign-in flow.")
        await manager.logout(spec)
        signins.pop(spec.name, None)
        log.info("dashboard: %s signed out of %s", viewer.principal.user_name, spec.name)
        return RedirectResponse(f"{base(request)}/signin", status_code=303)

    async def css(request: Request) -> Response:
        return Response(stylesheet, media_type="text/css", headers={"cache-control": "max-age=300"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "Method not allowed." if status == 405 else "No such page."
        return render(request, "error.html", None, status, message=message)

    app = Starlette(
        routes=[
            Route("/", page(overview), methods=["GET"]),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", action(logout), methods=["POST"]),
            Route("/keys", page(keys_page), methods=["GET"]),
            Route("/keys", action(create_key), methods=["POST"]),
            Route("/keys/{lookup}/revoke", action(revoke_key), methods=["POST"]),
            Route("/budgets", action(set_budgets), methods=["POST"]),
            Route("/health", page(health), methods=["GET"]),
            Route("/signin", page(signin_page), methods=["GET"]),
            Route("/signin/{provider}", action(start_signin), methods=["POST"]),
            Route("/signout/{provider}", action(signout), methods=["POST"]),
            Route("/static/dashboard.css", css, methods=["GET"]),
        ],
        middleware=[Middleware(ResponseHeaders, headers=lambda scope: SECURITY_HEADERS)],
        exception_handlers={HTTPException: not_found},
    )
    app.state.sessions = sessions
    return app
