"""The ASGI app, a thin adapter: HTTP in, pipeline stages (engine.pipeline.stages), HTTP out.

The routes that serve models (chat, embeddings, client formats) are raw ASGI (`asgi.PipelineRoute`,
answered before starlette routes anything: the hot path). Health, models, metrics and the admin
routes are starlette handlers below that read their collaborators from `app.state.services`.
`create_app` only builds and wires objects.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..accounts.audit import AuditWriter, audit_spill_dir, import_spilled
from ..accounts.auth import LOCAL_USER, Authenticator
from ..accounts.budgets import Budgets
from ..accounts.cache import MemoryCache, RedisCache, ResponseCache
from ..accounts.conversations import ConversationStore
from ..accounts.guards import Guards
from ..accounts.inflight import InFlight
from ..accounts.journal import Journal, reconcile_journals
from ..accounts.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from ..accounts.retention import AuditPruner
from ..accounts.shared import RedisBudgets
from ..accounts.store import Principal, Store
from ..alerts.config import webhooks_from_settings
from ..alerts.sink import AlertSink
from ..config import Settings
from ..errors import GatewayError, InvalidRequest, NotFound
from ..metrics import Metrics
from ..observability.tracing import load_tracing
from ..pipeline.conversations import Responses
from ..pipeline.deadlines import Deadlines
from ..pipeline.gateway import Gateway
from ..pipeline.images import ImageFetcher
from ..pipeline.probe import unreachable_local
from ..pipeline.shared_breakers import SharedBreakerBoard
from ..pipeline.stages import CHAT, EMBEDDINGS, OPENAI, IngressCodec, Pipeline
from ..pipeline.upstream import Upstream
from ..pipeline.upstream_models import fetch_upstream_models
from ..pipeline.validation import Limits
from ..spec.catalog import Catalog
from ..spec.loader import load_catalog, release_validators
from ..spec.models import resolve_model
from ..spec.secretfiles import with_files
from .admin_api import ADMIN_MAX_BODY, admin_routes
from .alerting import wire_alerts
from .apidoc.pages import ApiDocs
from .asgi import BodyDeadlines, BodyLimit, GatewayApp, PipelineRoute, error_headers, request_id_header
from .asgi_headers import ResponseHeaders
from .drain import Drain
from .protocol import GuardedHttpProtocol

__all__ = ["GatewayApp", "GracefulServer", "create_app"]

log = logging.getLogger("gaud.server")

#: Allocations between young-generation collections (the interpreter's default is 700).
GC_GEN0_THRESHOLD = 20_000


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=error_headers(exc))


@dataclass
class Services:
    """What the routes and the lifespan work with; built once by `create_app`."""

    settings: Settings
    gateway: Gateway
    store: Store
    upstream: Upstream
    authenticator: Authenticator
    limiter: RateLimiter
    cache: ResponseCache
    budgets: Budgets | RedisBudgets
    audit: AuditWriter
    metrics: Metrics
    pipeline: Pipeline
    spill_dir: Path
    drain: Drain
    started: float = field(default_factory=time.time)
    upstream_models: dict[str, list[str]] = field(default_factory=dict)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    body_deadlines: BodyDeadlines | None = None  # server.body_timeout
    pruner: AuditPruner | None = None  # audit.retention_days
    alerts: AlertSink | None = None  # alerts.webhooks

    @property
    def auth_enabled(self) -> bool:
        return self.authenticator.enabled

    @property
    def catalog(self) -> Catalog:
        return self.gateway.catalog


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


Handler = Callable[[Request], Awaitable[Response]]


def answers_errors(handler: Handler) -> Handler:
    """A starlette handler whose GatewayErrors become OpenAI error responses."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return error_response(exc)

    return wrapped


# -- starlette routes -------------------------------------------------------------------------------
@answers_errors
async def list_models(request: Request) -> Response:
    services = _services(request)
    principal = await services.authenticator.principal(request.headers)
    ready = await ready_providers(services.gateway)
    data = model_list(services.catalog, int(services.started), services.upstream_models, ready)
    if principal.models is not None or principal.team_models is not None:  # only what this key may call
        data = [entry for entry in data if principal.may_call(entry["id"])]
    return JSONResponse({"object": "list", "data": data})


@answers_errors
async def retrieve_model(request: Request) -> Response:
    """`GET /v1/models/{id}`: one entry of the list. A key that may not call the model gets the
    same 404 as an unknown id, as the list hides it."""
    services = _services(request)
    principal = await services.authenticator.principal(request.headers)
    model_id: str = request.path_params["model_id"]
    entry = None
    if principal.may_call(model_id):
        ready = await ready_providers(services.gateway)
        entry = model_entry(services.catalog, model_id, int(services.started), services.upstream_models, ready)
    if entry is None:
        raise NotFound(f"The model '{model_id}' does not exist or is not served by this gateway.", param="model")
    return JSONResponse(entry)


@answers_errors
async def health(request: Request) -> Response:
    if request.query_params.get("detail") in (None, "", "0"):
        return JSONResponse({"status": "ok"})
    services = _services(request)
    if services.auth_enabled:
        await services.authenticator.admin(request.headers)
    ready = await ready_providers(services.gateway)
    # As the start-up banner: a provider on this machine is ready only once something listens there.
    unreachable = await unreachable_local(services.catalog.providers[name] for name in ready)
    providers = {
        name: {"ready": name in ready and name not in unreachable, "missing_env": spec.missing_env(),
               **({"unreachable": unreachable[name]} if name in unreachable else {})}
        for name, spec in services.catalog.providers.items()
    }
    return JSONResponse({"status": "ok", "providers": providers, "breakers": services.gateway.router.breakers.states()})


@answers_errors
async def metrics_route(request: Request) -> Response:
    services = _services(request)
    if services.auth_enabled and bool(services.settings.get("metrics.require_admin")):
        await services.authenticator.admin(request.headers)
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@answers_errors
async def admin_usage(request: Request) -> Response:
    services = _services(request)
    await services.authenticator.admin(request.headers)
    since = request.query_params.get("since")
    try:
        start = float(since) if since else None
    except ValueError:
        raise InvalidRequest("'since' must be a Unix time in seconds.", param="since") from None
    rows = await asyncio.to_thread(services.store.usage, user=request.query_params.get("user"), since=start)
    return JSONResponse({"object": "list", "data": rows})


@answers_errors
async def admin_reload(request: Request) -> Response:
    services = _services(request)
    await services.authenticator.admin(request.headers)
    problems = await reload_specs(services)
    if problems:
        error = InvalidRequest("The specs have problems; the old config keeps serving.", code="invalid_specs")
        body = error.to_openai()
        body["error"]["problems"] = problems
        return JSONResponse(body, status_code=400)
    return JSONResponse({"reloaded": True, "providers": sorted(services.catalog.providers)})


def stored_response(name: str) -> Handler:
    """The GET/DELETE handler of client format `name`'s stored replies."""

    async def handler(request: Request) -> Response:
        return await _stored_response(request, name)

    return handler


async def _stored_response(request: Request, name: str) -> Response:
    """GET or DELETE a stored reply of a client format with `state` (`responses.store`), answered
    in that format's error envelope. Another user's reply is a 404, as a missing one."""
    services = _services(request)
    spec = services.catalog.ingress.get(name)
    if spec is None or spec.state is None:  # a reload dropped the format or its state
        raise HTTPException(404)
    try:
        principal = await services.authenticator.principal(request.headers)
        reply_id: str = request.path_params["id"]
        responses = services.pipeline.responses
        if request.method == "DELETE":
            return JSONResponse(await responses.delete(spec.state, principal, reply_id))
        return JSONResponse(await responses.retrieve(spec.state, principal, reply_id))
    except GatewayError as exc:
        status, body = spec.error_body(exc)
        return JSONResponse(body, status_code=status, headers=error_headers(exc))


async def callable_aliases(request: Request) -> list[str] | None:
    """The aliases the caller's key may call, as GET /v1/models lists them (for the landing page);
    None without a valid key."""
    services = _services(request)
    try:
        principal = await services.authenticator.principal(request.headers)
    except GatewayError:
        return None
    aliases = services.catalog.routes.get("aliases") or {}
    listed = model_list(services.catalog, 0, services.upstream_models, await ready_providers(services.gateway))
    return [entry["id"] for entry in listed if entry["id"] in aliases and principal.may_call(entry["id"])]


async def not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        error = InvalidRequest(f"Method {request.method} is not allowed here.", code="method_not_allowed", status=405)
        return error_response(error)
    return error_response(NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    body = {"error": {"message": "Internal gateway error.", "type": "server_error", "param": None, "code": "internal_error"}}
    return JSONResponse(body, status_code=500)


async def _answered_before_routing(request: Request) -> Response:  # pragma: no cover - never routed
    raise RuntimeError("POST requests that serve models are answered by GatewayApp")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- what the routes and the lifespan share ---------------------------------------------------------
async def ready_providers(gateway: Gateway) -> set[str]:
    """Providers requests do not skip as `not_configured`: their required environment keys are set,
    or they are signed in (`gaud-engine login`). The same test as the attempt loop's."""
    return {name for name, spec in gateway.catalog.providers.items() if await gateway.not_configured(spec) is None}


async def refresh_upstream_models(services: Services) -> None:
    if services.settings.get("models.refresh_from_upstream"):
        services.upstream_models.clear()
        services.upstream_models.update(await fetch_upstream_models(services.catalog))


async def reload_specs(services: Services) -> list[str]:
    """Load and validate the spec tree again; swap it in only when it is clean."""
    async with services.reload_lock:
        fresh = await asyncio.to_thread(load_catalog, services.catalog.root)
        if fresh.problems:
            problems = [str(p) for p in fresh.problems]
            log.error("reload refused, the old config keeps serving: %s", "; ".join(problems))
            return problems
        services.gateway.reload(fresh)
        await refresh_upstream_models(services)
        log.info("reloaded %d providers and %d aliases", len(fresh.providers), len(fresh.routes.get("aliases") or {}))
        return []


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    services: Services = app.state.services
    await _start(services)
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_specs(services)))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
        log.debug("SIGHUP reload not available in this process")
    restore_signals = services.drain.watch_signals()  # SIGTERM starts the server.shutdown_timeout clock
    try:
        yield
    finally:
        restore_signals()
        services.drain.close()
        await _stop(services)


async def _start(services: Services) -> None:
    store = services.store
    await asyncio.to_thread(store.migrate)
    await asyncio.to_thread(import_spilled, store, services.spill_dir)  # records a past shutdown could not write
    await asyncio.to_thread(reconcile_journals, store, services.spill_dir)  # requests a killed process held
    if services.auth_enabled:
        await asyncio.to_thread(_first_admin, store)
    else:
        user_id = await asyncio.to_thread(store.ensure_user, LOCAL_USER, role="admin")
        services.authenticator.local = Principal(user_id=user_id, user_name=LOCAL_USER, role="admin")
    services.audit.start()
    if services.alerts is not None:
        services.alerts.start()
    if services.pruner is not None:
        services.pruner.start()
    await refresh_upstream_models(services)
    # Specs, schemas and modules live as long as the process: move them out of the cyclic
    # collector's view so collections during load scan only per-request objects.
    release_validators()
    gc.collect()
    gc.freeze()
    # Under load some thousand objects of requests in flight are alive at any time, so the
    # default threshold (700 allocations) ran a collection every ~20 requests that scanned
    # mostly live objects: ~7 us of CPU a request, measured with gc.callbacks. Cyclic
    # garbage (rare: reference counting frees request objects) is still collected.
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


async def _stop(services: Services) -> None:
    if services.pruner is not None:
        await services.pruner.aclose()
    # Every queued audit record is written before exit (or spilled, past spill_after).
    await services.audit.close(float(services.settings.get("audit.spill_after")))
    if services.alerts is not None:  # after the audit writer: its spills are alerts too
        await services.alerts.aclose(float(services.settings.get("alerts.drain_seconds")))
    await services.upstream.close()
    if services.pipeline.tracing is not None:  # spans still queued go out (within the exporter's timeout)
        await asyncio.to_thread(services.pipeline.tracing.shutdown)
    await services.limiter.aclose()
    await services.cache.aclose()
    for shared in (services.budgets, services.gateway.router.breakers):
        if hasattr(shared, "aclose"):
            await shared.aclose()
    services.store.close()


class _LazyDashboard:
    """The /ui app, built (and engine.web.dashboard imported) on its first request."""

    def __init__(self, store: Store, gateway: Gateway, *, auth_enabled: bool, body_deadlines: BodyDeadlines | None) -> None:
        self._args = (store, gateway, auth_enabled, body_deadlines)
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            from .dashboard import dashboard_app

            store, gateway, auth_enabled, body_deadlines = self._args
            self.app = dashboard_app(store, gateway, auth_enabled=auth_enabled, body_deadlines=body_deadlines)
        await self.app(scope, receive, send)


# -- wiring -----------------------------------------------------------------------------------------
def create_app(
    catalog: Catalog, settings: Settings, *, upstream: Upstream | None = None, store: Store | None = None
) -> GatewayApp:
    """The gateway as an ASGI app. `catalog` must already be loaded and free of problems."""
    services = build_services(catalog, settings, upstream=upstream, store=store)
    # The connection-level limits of the process serving this app (the `http` class `serve` gives uvicorn).
    GuardedHttpProtocol.configure(
        header_timeout=_optional_float(settings.get("server.header_timeout")),
        send_timeout=_optional_float(settings.get("server.send_timeout")),
    )
    app = Starlette(
        routes=_routes(services, catalog),
        exception_handlers={HTTPException: not_found, Exception: server_error},
        lifespan=lifespan,
    )
    app.add_middleware(ResponseHeaders, headers=request_id_header)
    app.state.services = services
    app.state.gateway = services.gateway
    app.state.store = services.store
    app.state.audit = services.audit
    app.state.metrics = services.metrics
    return GatewayApp(app, _pipeline_routes(services, catalog), services.drain.tasks)


def _routes(services: Services, catalog: Catalog) -> list[Any]:
    # POST to a route that serves models is answered by GatewayApp before routing; these
    # entries give other methods their 405.
    served = ["/v1/chat/completions", "/chat/completions", "/v1/embeddings", "/embeddings"]
    served += [path for spec in catalog.ingress.values() for path in spec.routes.values()]
    dashboard = _LazyDashboard(services.store, services.gateway, auth_enabled=services.auth_enabled,
                               body_deadlines=services.body_deadlines)
    return [
        *(Route(path, _answered_before_routing, methods=["POST"]) for path in served),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        *admin_routes(services.store, services.authenticator, BodyLimit(ADMIN_MAX_BODY, services.body_deadlines)),
        Route("/admin/usage", admin_usage, methods=["GET"]),
        Mount("/ui", app=dashboard),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        *(Route(spec.state.route, stored_response(name), methods=["GET", "DELETE"])
          for name, spec in catalog.ingress.items() if spec.state is not None),
        *ApiDocs(callable_aliases).routes(),  # /, /openapi.json, /docs
    ]


def _pipeline_routes(services: Services, catalog: Catalog) -> dict[str, ASGIApp]:
    """Path -> raw ASGI handler for every route that serves a model. Client formats' routes are
    fixed at start; their mappings follow reloads (`IngressCodec`)."""
    max_body = BodyLimit(int(services.settings.get("limits.max_body_bytes")), services.body_deadlines)
    pipeline = services.pipeline
    chat = PipelineRoute(pipeline, CHAT, OPENAI, max_body)
    embeddings = PipelineRoute(pipeline, EMBEDDINGS, OPENAI, max_body)
    routes: dict[str, ASGIApp] = {
        "/v1/chat/completions": chat, "/chat/completions": chat, "/v1/embeddings": embeddings, "/embeddings": embeddings,
    }
    for name, spec in catalog.ingress.items():
        codec = IngressCodec(name, spec, services.gateway)
        routes[spec.routes["chat"]] = PipelineRoute(pipeline, CHAT, codec, max_body)
        if "count_tokens" in spec.routes:
            routes[spec.routes["count_tokens"]] = PipelineRoute(pipeline, None, codec, max_body)
    return routes


def check_settings(settings: Settings) -> None:
    """Raise ValueError naming the first setting the app cannot start with (`serve` checks this
    before it binds, so a bad value is a one-line error, not a traceback from a worker)."""
    if settings.get("limits.control_chars") not in ("strip", "refuse"):
        raise ValueError("limits.control_chars must be 'strip' or 'refuse'")
    webhooks_from_settings(settings.get("alerts.webhooks"), with_files(os.environ))


def build_services(
    catalog: Catalog, settings: Settings, *, upstream: Upstream | None = None, store: Store | None = None
) -> Services:
    """Every collaborator of the app, from the settings."""
    upstream = upstream or Upstream(
        connect_timeout=float(settings.get("upstream.connect_timeout")),
        read_timeout=float(settings.get("upstream.read_timeout")),
        max_connections=int(settings.get("upstream.max_connections")),
    )
    store = store or Store(str(settings.get("database.url")), key_secret=settings.get("auth.key_secret"))
    check_settings(settings)
    limits = Limits(**{f: settings.get(f"limits.{f}") for f in Limits.__dataclass_fields__})
    limiter, cache = _shared_state(settings)
    gateway = Gateway(catalog, upstream, _images(settings), limiter=limiter, credentials=_credentials(store, catalog),
                      allow_unlisted=bool(settings.get("routing.allow_unlisted_models")),
                      drop_unsupported=bool(settings.get("routing.drop_unsupported_params")),
                      deadlines=Deadlines.from_settings(settings.get))
    guards = Guards(
        limiter,
        cache,
        key_rpm=settings.get("ratelimits.key_rpm"),
        key_tpm=settings.get("ratelimits.key_tpm"),
        default_ttl=float(settings.get("cache.default_ttl")),
    )
    authenticator = Authenticator(store, enabled=bool(settings.get("auth.enabled")))
    budgets = _budgets(settings, store, gateway)
    spill_dir = audit_spill_dir(settings)
    audit = AuditWriter(
        store, batch_size=int(settings.get("audit.batch_size")), max_delay=float(settings.get("audit.max_delay")),
        spill_dir=spill_dir, journal=Journal(spill_dir) if settings.get("audit.journal") else None,
    )
    metrics = Metrics(lambda: gateway.router.breakers.states())
    gateway.metrics = metrics
    alerts = wire_alerts(settings, metrics, gateway, budgets, audit)
    pipeline = Pipeline(
        gateway, authenticator, guards, budgets, audit, metrics,
        limits=limits, store_content=bool(settings.get("audit.store_content")),
        responses=_responses(settings, store), tracing=load_tracing(settings.get),
        in_flight=InFlight(settings.get("limits.max_in_flight")),
    )
    return Services(
        settings=settings, gateway=gateway, store=store, upstream=upstream, authenticator=authenticator,
        limiter=limiter, cache=cache, budgets=budgets, audit=audit, metrics=metrics, pipeline=pipeline,
        spill_dir=spill_dir, drain=Drain(float(settings.get("server.shutdown_timeout"))),
        body_deadlines=_body_deadlines(settings), pruner=_pruner(settings, store), alerts=alerts,
    )


def _pruner(settings: Settings, store: Store) -> AuditPruner | None:
    retention = settings.get("audit.retention_days")
    return None if retention is None else AuditPruner(store, float(retention))


def _responses(settings: Settings, store: Store) -> Responses:
    """Stored replies when the operator opted in (`responses.store`), else none."""
    if not settings.get("responses.store"):
        return Responses(None)
    retention = settings.get("responses.retention_days")
    return Responses(ConversationStore(store, None if retention is None else float(retention)))


def _body_deadlines(settings: Settings) -> BodyDeadlines | None:
    timeout = _optional_float(settings.get("server.body_timeout"))
    return None if timeout is None else BodyDeadlines(timeout)


def _images(settings: Settings) -> ImageFetcher:
    return ImageFetcher(
        allow_private=bool(settings.get("images.allow_private")),
        allowed_hosts=settings.get("images.allowed_hosts") or (),
        max_bytes=int(settings.get("images.max_bytes")),
        timeout=float(settings.get("images.timeout")),
    )


def _budgets(settings: Settings, store: Store, gateway: Gateway) -> Budgets | RedisBudgets:
    """Budgets in this process, or (with `redis.url`, several instances) in Redis, and then the
    circuit breakers' states too."""
    warn_at = tuple(settings.get("budgets.warn_at") or ())
    redis_url = settings.get("redis.url")
    if not redis_url:
        return Budgets(store, warn_at=warn_at)
    table = gateway.router.table
    gateway.router.breakers = SharedBreakerBoard(redis_url, failures=table.breaker_failures, cooldown=table.breaker_cooldown)
    return RedisBudgets(redis_url, store, warn_at=warn_at)


def _credentials(store: Store, catalog: Catalog) -> Any:
    """A credential manager when some spec signs in or exchanges tokens; None otherwise."""
    if not any(spec.auth is not None and spec.auth.dynamic for spec in catalog.providers.values()):
        return None
    from ..credentials import CredentialManager

    try:
        return CredentialManager(store)
    except Exception as exc:  # noqa: BLE001 - e.g. no GAUD_SECRET_KEY for a shared database
        log.warning("signed-in providers are unavailable: %s", exc)
        return None


def _shared_state(settings: Settings) -> tuple[RateLimiter, ResponseCache]:
    """Rate-limit buckets and cache in Redis when `redis.url` is set, else in this process."""
    url = settings.get("redis.url")
    if url:
        return RedisRateLimiter(url), RedisCache(url)
    return MemoryRateLimiter(), MemoryCache(int(settings.get("cache.max_entries")))


def _first_admin(store: Store) -> None:
    """On first start with auth on and no keys: create an admin and print its key, once."""
    # The key secret is found (or its absence reported: set GAUD_SECRET_KEY) at start, not at the
    # first request.
    store.key_secrets  # noqa: B018
    # No key at all yet (a database used with auth off holds only the local user).
    if not store.list_keys():
        key, _ = store.create_key("admin", role="admin")
        print(f"Created the first admin user. Its API key (shown once, store it now):\n  {key}", flush=True)


def model_list(
    catalog: Catalog,
    created: int,
    upstream_models: dict[str, list[str]] | None = None,
    ready: set[str] | None = None,
) -> list[dict[str, Any]]:
    """What callers can ask for, in OpenAI's list shape: aliases with a usable deployment, then
    provider/model for every provider with credentials (from the specs, and from the upstreams'
    own lists when refreshed). `ready` defaults to the providers whose environment keys are set."""
    if ready is None:
        ready = {name for name, spec in catalog.providers.items() if not spec.missing_env()}
    seen: dict[str, dict[str, Any]] = {}
    compiled = catalog.route_table.routes if catalog.route_table is not None else {}
    for alias, route in (catalog.routes.get("aliases") or {}).items():
        own = [c.spec for c in compiled[alias].candidates if c.spec is not None] if alias in compiled else []
        # A deployment with its own credentials (`env`) is ready when they are set.
        if any(c["provider"] in ready for c in route.get("candidates", [])) or any(not s.missing_env() for s in own):
            seen[alias] = {"id": alias, "object": "model", "created": created, "owned_by": "gaud-engine"}
    for name in sorted(ready):
        ids = list(catalog.providers[name].models) + list((upstream_models or {}).get(name, []))
        for model_id in ids:
            key = f"{name}/{model_id}"
            seen.setdefault(key, {"id": key, "object": "model", "created": created, "owned_by": name})
    return list(seen.values())


def model_entry(
    catalog: Catalog,
    model_id: str,
    created: int,
    upstream_models: dict[str, list[str]] | None = None,
    ready: set[str] | None = None,
) -> dict[str, Any] | None:
    """The `model_list` entry with this id, or None. A name the list does not spell out but a chat
    request resolves to one listed model of a provider with credentials (a bare model id that one
    spec lists, a model's alias in its spec) is an entry too, under the name asked for."""
    listed = model_list(catalog, created, upstream_models, ready)
    found = next((entry for entry in listed if entry["id"] == model_id), None)
    if found is not None or model_id in (catalog.routes.get("aliases") or {}):
        return found
    try:
        target = resolve_model(catalog, model_id)[0]
    except GatewayError:
        return None
    if not any(entry["id"] == target.name for entry in listed):
        return None
    return {"id": model_id, "object": "model", "created": created, "owned_by": target.provider.name}


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit status 143). By then the gateway
    has finished its requests and flushed its audit log, so it exits 0 instead."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)
