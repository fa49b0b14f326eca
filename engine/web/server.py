"""The ASGI app: OpenAI-compatible routes over the gateway. Thin: parsing, auth, errors, headers,
and the accounting that wraps every chat request (budget reservation, audit record)."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..accounts.accounting import AuditWriter, Budgets, Reservation, audit_spill_dir, import_spilled
from ..accounts.auth import LOCAL_USER, Authenticator
from ..accounts.cache import MemoryCache, RedisCache, ResponseCache
from ..accounts.guards import Admission, Guards
from ..accounts.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from ..accounts.shared import RedisBudgets, SharedBreakerBoard
from ..accounts.store import Principal, Store
from ..config import Settings
from ..errors import GatewayError, InvalidRequest, NotFound, drop_tracebacks
from ..logs import FieldLogger
from ..metrics import Metrics
from ..pipeline.embeddings import estimate_input_tokens, validate_embeddings_request
from ..pipeline.gateway import Exchange, Gateway
from ..pipeline.images import ImageFetcher
from ..pipeline.upstream import Upstream
from ..pipeline.upstream_models import fetch_upstream_models
from ..pipeline.validation import Limits, estimate_prompt_tokens, validate_request
from ..spec.loader import Catalog, load_catalog, release_validators
from .asgi_headers import ResponseHeaders

__all__ = ["GatewayApp", "GracefulServer", "create_app"]

log = logging.getLogger("gaud.server")
request_log = FieldLogger("gaud.request")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**getattr(exc, "headers", {}), **(headers or {})}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


#: Allocations between young-generation collections (the interpreter's default is 700).
GC_GEN0_THRESHOLD = 20_000

_ids = random.Random()  # seeded from os.urandom; spawned workers each seed their own


def _request_id(headers: Mapping[str, str]) -> str:
    """The client's own `x-request-id` when it sent a sane one, else a new random id."""
    value = headers.get("x-request-id")
    if value is not None and 0 < len(value) <= 128 and value.isascii():
        return value
    # Unique, not secret: a per-process PRNG seeded from the OS, without a getrandom(2) per request.
    return f"{_ids.getrandbits(128):032x}"


def _request_id_header(scope: Scope) -> list[tuple[bytes, bytes]]:
    """`x-request-id` for routes served by starlette; the id is also left in the request's state,
    so a handler's audit record carries the same id as the response."""
    request_id = _request_id(_header_map(scope))
    scope.setdefault("state", {})["request_id"] = request_id
    return [(b"x-request-id", request_id.encode())]


def _header_map(scope: Scope) -> dict[str, str]:
    """Request headers as a plain dict (names are lower case in ASGI); the first of repeated
    headers wins, as with starlette's Headers, whose every lookup scans the whole list."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


_INTERNAL_ERROR = {"error": {"message": "Internal gateway error.", "type": "server_error", "param": None, "code": "internal_error"}}


class _Responder:
    """Sends one response straight over ASGI (status, JSON or an SSE stream), with x-request-id."""

    def __init__(self, send: Send, request_id: str, ingress: Any = None) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False
        self.ingress = ingress  # engine.spec.ingress.IngressSpec: errors in a client format's envelope

    def _start(self, status: int, media_type: str, headers: dict[str, str], length: int | None) -> Message:
        raw = [(b"content-type", media_type.encode()), (b"x-request-id", self.request_id.encode())]
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        raw.extend((k.encode(), v.encode()) for k, v in headers.items())
        self.started = True
        return {"type": "http.response.start", "status": status, "headers": raw}

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        content = orjson.dumps(payload)
        await self.send(self._start(status, "application/json", headers or {}, len(content)))
        await self.send({"type": "http.response.body", "body": content})

    async def error(self, exc: GatewayError) -> None:
        headers = dict(getattr(exc, "headers", {}))
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
        if self.ingress is not None:
            status, body = self.ingress.error_body(exc)
            await self.json(status, body, headers)
            return
        await self.json(exc.status, exc.to_openai(), headers)

    async def internal_error(self) -> None:
        if self.ingress is not None:
            await self.error(GatewayError("Internal gateway error."))
        else:
            await self.json(500, _INTERNAL_ERROR)

    async def stream(self, pieces: AsyncIterator[bytes], receive: Receive, headers: dict[str, str]) -> bool:
        """Send an SSE body as it is produced. A client disconnect cancels the producer at once
        (and with it the upstream request); returns False in that case."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.send(self._start(200, "text/event-stream", {
                "cache-control": "no-cache", "x-accel-buffering": "no", **headers}, None))
            async for piece in pieces:
                await self.send({"type": "http.response.body", "body": piece, "more_body": True})
            await self.send({"type": "http.response.body", "body": b""})
            return True
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            return False
        finally:
            watcher.cancel()
            await pieces.aclose()  # type: ignore[attr-defined]


async def _read_json(headers: Mapping[str, str], receive: Receive, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx GatewayError."""
    content_type = headers.get("content-type", "")
    if "json" not in content_type.lower():
        raise InvalidRequest(
            "Content-Type must be application/json.", param="content-type", code="unsupported_media_type", status=415
        )
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequest(f"The request body exceeds {max_bytes} bytes.", code="request_too_large", status=413)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(f"The request body exceeds {max_bytes} bytes.", code="request_too_large", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return _parse_json(b"".join(chunks))


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


class _LazyDashboard:
    """The /ui app, built (and engine.web.dashboard imported) on its first request."""

    def __init__(self, store: Store, gateway: Gateway, *, auth_enabled: bool) -> None:
        self._args = (store, gateway, auth_enabled)
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            from .dashboard import dashboard_app

            store, gateway, auth_enabled = self._args
            self.app = dashboard_app(store, gateway, auth_enabled=auth_enabled)
        await self.app(scope, receive, send)


class GatewayApp:
    """The chat route answered directly; everything else (and lifespan) goes to starlette."""

    def __init__(self, app: Starlette, fast_routes: dict[str, ASGIApp]) -> None:
        self.app = app
        self.fast_routes = fast_routes
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx GatewayError."""
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower():
        raise InvalidRequest(
            "Content-Type must be application/json.", param="content-type", code="unsupported_media_type", status=415
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequest(f"The request body exceeds {max_bytes} bytes.", code="request_too_large", status=413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(f"The request body exceeds {max_bytes} bytes.", code="request_too_large", status=413)
        chunks.append(chunk)
    return _parse_json(b"".join(chunks))


class Accounting:
    """Budget reservation before a chat request and the audit record after it."""

    def __init__(
        self, budgets: Budgets | RedisBudgets, audit: AuditWriter, metrics: Metrics, *, store_content: bool
    ) -> None:
        self.budgets = budgets
        self.audit = audit
        self.metrics = metrics
        self.store_content = store_content

    async def finish(
        self,
        exchange: Exchange,
        principal: Principal,
        reservation: Reservation | None,
        status: int,
        error: GatewayError | None,
        body: dict[str, Any] | None,
    ) -> None:
        self.metrics.in_flight.dec()
        if reservation is not None:
            self.budgets.settle(reservation, exchange.cost)
        error = error or exchange.error
        usage = exchange.usage or {}
        now = time.perf_counter()
        content = None
        if self.store_content and body is not None:
            content = orjson.dumps({"messages": body.get("messages")}).decode()
        record = {
                "request_id": exchange.request_id,
                "ts": time.time(),
                "user_id": principal.user_id,
                "user_name": principal.user_name,
                "alias": exchange.alias or (body.get("model") if isinstance(body, dict) else None),
                "deployment": exchange.deployment,
                "tried": ",".join(exchange.tried) or None,
                "attempts": exchange.attempts,
                "status": status,
                "error_kind": error.kind if error is not None else None,
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
                "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                "cost": exchange.cost,
                "latency_ms": (now - exchange.started) * 1000,
                "ttft_ms": (exchange.first_byte - exchange.started) * 1000 if exchange.first_byte else None,
                "stream": exchange.stream,
                "cache_hit": exchange.cache_hit,
                "content": content,
        }
        overhead = exchange.overhead_ms() if status < 400 and not exchange.cache_hit else None
        self.metrics.record(record, overhead)
        fields = record.copy()  # the log line carries the record without the content and time
        del fields["content"], fields["ts"]
        fields["overhead_ms"] = round(overhead, 3) if overhead is not None else None
        request_log.info(f"{record['status']} {record['alias']} {record['deployment'] or '-'}", fields)
        await self.audit.add(record)


def create_app(
    catalog: Catalog, settings: Settings, *, upstream: Upstream | None = None, store: Store | None = None
) -> Starlette:
    """The gateway as an ASGI app. `catalog` must already be loaded and free of problems."""
    upstream = upstream or Upstream(
        connect_timeout=float(settings.get("upstream.connect_timeout")),
        read_timeout=float(settings.get("upstream.read_timeout")),
        max_connections=int(settings.get("upstream.max_connections")),
    )
    images = ImageFetcher(
        allow_private=bool(settings.get("images.allow_private")),
        allowed_hosts=settings.get("images.allowed_hosts") or (),
        max_bytes=int(settings.get("images.max_bytes")),
        timeout=float(settings.get("images.timeout")),
    )
    store = store or Store(str(settings.get("database.url")))
    limits = Limits(**{f: settings.get(f"limits.{f}") for f in Limits.__dataclass_fields__})
    if limits.control_chars not in ("strip", "refuse"):
        raise ValueError("limits.control_chars must be 'strip' or 'refuse'")
    limiter, cache = _shared_state(settings)
    gateway = Gateway(catalog, upstream, images, limits=limits, limiter=limiter, credentials=_credentials(store, catalog))
    guards = Guards(
        limiter,
        cache,
        key_rpm=settings.get("ratelimits.key_rpm"),
        key_tpm=settings.get("ratelimits.key_tpm"),
        default_ttl=float(settings.get("cache.default_ttl")),
    )
    auth_enabled = bool(settings.get("auth.enabled"))
    authenticator = Authenticator(store, enabled=auth_enabled)
    warn_at = tuple(settings.get("budgets.warn_at") or ())
    redis_url = settings.get("redis.url")
    budgets: Budgets | RedisBudgets
    if redis_url:
        # Several instances: budgets and breaker states live in Redis too.
        budgets = RedisBudgets(redis_url, store, warn_at=warn_at)
        table = gateway.router.table
        gateway.router.breakers = SharedBreakerBoard(
            redis_url, failures=table.breaker_failures, cooldown=table.breaker_cooldown
        )
    else:
        budgets = Budgets(store, warn_at=warn_at)
    spill_dir = audit_spill_dir(settings)
    audit = AuditWriter(
        store, batch_size=int(settings.get("audit.batch_size")), max_delay=float(settings.get("audit.max_delay")),
        spill_dir=spill_dir,
    )
    metrics = Metrics(lambda: gateway.router.breakers.states())
    gateway.metrics = metrics
    accounting = Accounting(budgets, audit, metrics, store_content=bool(settings.get("audit.store_content")))
    metrics_need_admin = auth_enabled and bool(settings.get("metrics.require_admin"))
    max_body = int(settings.get("limits.max_body_bytes"))
    started = time.time()

    def ingress_handler(name: str) -> ASGIApp:
        """A client format's chat route (ingress.d/): its request is mapped to a canonical one,
        served by the same pipeline, and the reply or stream mapped back. The spec is looked up
        per request, so a reload's new mapping applies at once."""

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            await serve_chat(scope, receive, send, gateway.catalog.ingress.get(name) or ingress_specs[name])

        return handler

    def count_tokens_handler(name: str) -> ASGIApp:
        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            spec = gateway.catalog.ingress.get(name) or ingress_specs[name]
            headers = _header_map(scope)
            out = _Responder(send, _request_id(headers), spec)
            try:
                await authenticator.principal(headers)
                body = spec.to_canonical(await _read_json(headers, receive, max_body), count=True)
                body.setdefault("max_tokens", 1)
                body = validate_request(body, limits)
                await out.json(200, spec.count_tokens(estimate_prompt_tokens(body)))
            except GatewayError as exc:
                await out.error(exc)
            except ClientDisconnect:
                return
            except Exception:
                log.exception("unhandled error on %s", scope["path"])
                await out.internal_error()

        return handler

    async def serve_chat(scope: Scope, receive: Receive, send: Send, ingress: Any = None) -> None:
        """One chat request through auth, validation, guards, budgets, the gateway and audit;
        `ingress` (a client format's spec, or None for OpenAI chat) translates at both ends.

        POST /v1/chat/completions is this raw ASGI handler itself: the hot path skips starlette's
        routing, middleware and response classes (measured: about half the per-request cost)."""
        headers = _header_map(scope)
        out = _Responder(send, _request_id(headers), ingress)
        exchange = Exchange(request_id=out.request_id)
        try:
            principal = await authenticator.principal(headers)
        except GatewayError as exc:
            await out.error(exc)
            return
        metrics.in_flight.inc()
        body: dict[str, Any] | None = None
        reservation: Reservation | None = None
        admission: Admission | None = None
        status, error = 200, None
        try:
            raw = await _read_json(headers, receive, max_body)
            body = validate_request(raw if ingress is None else ingress.to_canonical(raw), limits)
            exchange.stream = bool(body.get("stream"))
            plan = await gateway.plan(body)
            tokens = plan.facts["estimated_tokens"] + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
            admission = await admit(principal, tokens)
            reply_headers = dict(admission.headers)
            cached = guards.cache_plan(body, headers, principal, plan.route.cache if plan.route else None)
            if cached is not None:
                hit = await guards.cache.get(cached.key)
                metrics.cache.labels("hit" if hit is not None else "miss").inc()
                if hit is not None:
                    exchange.cache_hit, exchange.alias = True, body["model"]
                    exchange.usage = hit.get("usage")
                    reply = hit if ingress is None else ingress.from_canonical(hit, raw)
                    await out.json(200, reply, {**reply_headers, "x-gaud-cache": "hit", "x-gaud-cost": "0.00000000"})
                    return
            # The cost estimate is only worth computing for a user with a budget to reserve against.
            estimate = gateway.estimate_cost(body, plan) if principal.has_budget else 0.0
            reservation = await budgets.reserve(principal, estimate)
            warning = budgets.warning(principal)
            if warning:
                reply_headers["x-gaud-budget-warning"] = warning
                log.warning("budget warning for user %s: %s", principal.user_name, warning)
            if exchange.stream:
                encoder = None if ingress is None else ingress.stream_encoder(plan.facts["estimated_tokens"], raw)
                result = await gateway.chat_stream(body, exchange, validated=True, plan=plan, encoder=encoder)
                reply_headers["x-gaud-overhead-ms"] = f"{exchange.overhead_ms():.3f}"
                if not await out.stream(result.body, receive, {**reply_headers, **result.headers}):
                    status = 499  # the client went away; the upstream request was cancelled
                return
            chat = await gateway.chat(body, exchange, validated=True, plan=plan)
            if cached is not None:
                await guards.cache.set(cached.key, chat.completion, cached.ttl)
                reply_headers["x-gaud-cache"] = "miss"
            reply_headers["x-gaud-overhead-ms"] = f"{exchange.overhead_ms():.3f}"
            reply = chat.completion if ingress is None else ingress.from_canonical(chat.completion, raw)
            await out.json(200, reply, {**reply_headers, **chat.headers})
        except GatewayError as exc:
            status, error = exc.status, exc
            await out.error(exc)
        except ClientDisconnect:
            status = 499
        except Exception:
            status = 500
            log.exception("unhandled error on %s", scope["path"])
            if not out.started:
                await out.internal_error()
        finally:
            if admission is not None and admission.tokens_key is not None:
                await guards.settle(admission, _total_tokens(exchange))
            await accounting.finish(exchange, principal, reservation, status, error, body)
            # A handled error's traceback holds this frame, which holds the error (and the
            # request): a cycle only the collector frees. Drop it now (see GC_GEN0_THRESHOLD).
            drop_tracebacks(error)
            drop_tracebacks(exchange.error)

    async def embeddings(request: Request) -> Response:
        exchange = Exchange(request_id=request.scope.get("state", {}).get("request_id", ""))
        try:
            principal = await authenticator.principal(request.headers)
        except GatewayError as exc:
            return error_response(exc)
        metrics.in_flight.inc()
        body: dict[str, Any] | None = None
        reservation: Reservation | None = None
        admission: Admission | None = None
        status, error = 200, None
        try:
            body = validate_embeddings_request(await read_json(request, max_body))
            tokens = estimate_input_tokens(body["input"])
            admission = await admit(principal, tokens)
            reservation = await budgets.reserve(principal, 0.0)
            result = await gateway.embeddings(body, exchange)
            headers = {**admission.headers, **result.headers, "x-gaud-overhead-ms": f"{exchange.overhead_ms():.3f}"}
            return JSONResponse(result.completion, headers=headers)
        except GatewayError as exc:
            status, error = exc.status, exc
            return error_response(exc)
        except ClientDisconnect:
            status = 499
            return Response(status_code=499)
        finally:
            if admission is not None and admission.tokens_key is not None:
                await guards.settle(admission, _total_tokens(exchange))
            await accounting.finish(exchange, principal, reservation, status, error, None)

    async def metrics_route(request: Request) -> Response:
        if metrics_need_admin:
            try:
                await authenticator.admin(request.headers)
            except GatewayError as exc:
                return error_response(exc)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def list_models(request: Request) -> Response:
        try:
            await authenticator.principal(request.headers)
        except GatewayError as exc:
            return error_response(exc)
        ready = await ready_providers()
        return JSONResponse({"object": "list", "data": model_list(gateway.catalog, int(started), upstream_models, ready)})

    async def admit(principal: Principal, tokens: int) -> Admission:
        """The caller's rate limits; a refusal is counted in the metrics before it is raised."""
        try:
            return await guards.admit(principal, tokens)
        except GatewayError:
            metrics.rate_limited.labels("key").inc()
            raise

    async def ready_providers() -> set[str]:
        """Providers with credentials: their environment keys, or a sign-in (`gaud-engine login`)."""
        ready = set()
        for name, spec in gateway.catalog.providers.items():
            if not spec.missing_env():
                ready.add(name)
            elif gateway.credentials is not None and spec.auth is not None and spec.auth.signs_in:
                try:
                    if await gateway.credentials.signed_in(spec):
                        ready.add(name)
                except GatewayError:
                    pass
        return ready

    async def health(request: Request) -> Response:
        if request.query_params.get("detail") not in (None, "", "0"):
            if auth_enabled:
                try:
                    await authenticator.admin(request.headers)
                except GatewayError as exc:
                    return error_response(exc)
            ready = await ready_providers()
            providers = {
                name: {"ready": name in ready, "missing_env": spec.missing_env()}
                for name, spec in gateway.catalog.providers.items()
            }
            return JSONResponse({"status": "ok", "providers": providers, "breakers": gateway.router.breakers.states()})
        return JSONResponse({"status": "ok"})

    async def admin_keys(request: Request) -> Response:
        try:
            await authenticator.admin(request.headers)
            if request.method == "GET":
                keys = await asyncio.to_thread(store.list_keys)
                return JSONResponse({"object": "list", "data": [_key_json(k) for k in keys]})
            body = await read_json(request, 64 * 1024)
            user = body.get("user")
            role = body.get("role", "member")
            if not isinstance(user, str) or not user.strip():
                raise InvalidRequest("'user' is required.", param="user")
            if role not in ("admin", "member"):
                raise InvalidRequest("'role' must be admin or member.", param="role")
            fields = {"role": role}
            for name in ("budget_daily", "budget_monthly"):
                value = body.get(name)
                if value is not None and (not isinstance(value, (int, float)) or value < 0):
                    raise InvalidRequest(f"'{name}' must be a non-negative number of USD.", param=name)
                fields[name] = value
            key, info = await asyncio.to_thread(store.create_key, user.strip(), **fields)
            return JSONResponse({"key": key, **_key_json(info)}, status_code=201)
        except GatewayError as exc:
            return error_response(exc)

    async def admin_revoke(request: Request) -> Response:
        try:
            await authenticator.admin(request.headers)
            revoked = await asyncio.to_thread(store.revoke_key, request.path_params["lookup"])
            if not revoked:
                raise NotFound("No active key with that id.", code="key_not_found")
            return JSONResponse({"revoked": True})
        except GatewayError as exc:
            return error_response(exc)

    async def admin_usage(request: Request) -> Response:
        try:
            await authenticator.admin(request.headers)
            since = request.query_params.get("since")
            rows = await asyncio.to_thread(
                store.usage, user=request.query_params.get("user"), since=float(since) if since else None
            )
            return JSONResponse({"object": "list", "data": rows})
        except ValueError:
            return error_response(InvalidRequest("'since' must be a Unix time in seconds.", param="since"))
        except GatewayError as exc:
            return error_response(exc)

    upstream_models: dict[str, list[str]] = {}
    refresh_models = bool(settings.get("models.refresh_from_upstream"))

    async def refresh_upstream_models() -> None:
        if refresh_models:
            upstream_models.clear()
            upstream_models.update(await fetch_upstream_models(gateway.catalog))

    reload_lock = asyncio.Lock()

    async def reload_specs() -> list[str]:
        """Load and validate the spec tree again; swap it in only when it is clean."""
        async with reload_lock:
            fresh = await asyncio.to_thread(load_catalog, gateway.catalog.root)
            if fresh.problems:
                problems = [str(p) for p in fresh.problems]
                log.error("reload refused, the old config keeps serving: %s", "; ".join(problems))
                return problems
            gateway.reload(fresh)
            await refresh_upstream_models()
            log.info("reloaded %d providers and %d aliases", len(fresh.providers), len(fresh.routes.get("aliases") or {}))
            return []

    async def admin_reload(request: Request) -> Response:
        try:
            await authenticator.admin(request.headers)
        except GatewayError as exc:
            return error_response(exc)
        problems = await reload_specs()
        if problems:
            error = InvalidRequest("The specs have problems; the old config keeps serving.", code="invalid_specs")
            body = error.to_openai()
            body["error"]["problems"] = problems
            return JSONResponse(body, status_code=400)
        return JSONResponse({"reloaded": True, "providers": sorted(gateway.catalog.providers)})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            error = InvalidRequest(f"Method {request.method} is not allowed here.", code="method_not_allowed", status=405)
            return error_response(error)
        return error_response(NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        body = {"error": {"message": "Internal gateway error.", "type": "server_error", "param": None, "code": "internal_error"}}
        return JSONResponse(body, status_code=500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(store.migrate)
        await asyncio.to_thread(import_spilled, store, spill_dir)  # records a past shutdown could not write
        if auth_enabled:
            await asyncio.to_thread(_first_admin, store)
        else:
            user_id = await asyncio.to_thread(store.ensure_user, LOCAL_USER, role="admin")
            authenticator.local = Principal(user_id=user_id, user_name=LOCAL_USER, role="admin")
        audit.start()
        await refresh_upstream_models()
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
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_specs()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            log.debug("SIGHUP reload not available in this process")
        try:
            yield
        finally:
            # Every queued audit record is written before exit (or spilled, past spill_after).
            await audit.close(float(settings.get("audit.spill_after")))
            await upstream.close()
            await limiter.aclose()
            await cache.aclose()
            for shared in (budgets, gateway.router.breakers):
                if hasattr(shared, "aclose"):
                    await shared.aclose()
            store.close()

    ingress_paths = [path for spec in catalog.ingress.values() for path in spec.routes.values()]
    app = Starlette(
        routes=[
            # POST is answered by GatewayApp before routing; these give other methods their 405.
            Route("/v1/chat/completions", _answered_before_routing, methods=["POST"]),
            Route("/chat/completions", _answered_before_routing, methods=["POST"]),
            *(Route(path, _answered_before_routing, methods=["POST"]) for path in ingress_paths),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/admin/keys", admin_keys, methods=["GET", "POST"]),
            Route("/admin/keys/{lookup}/revoke", admin_revoke, methods=["POST"]),
            Route("/admin/usage", admin_usage, methods=["GET"]),
            Mount("/ui", app=_LazyDashboard(store, gateway, auth_enabled=auth_enabled)),
            Route("/admin/reload", admin_reload, methods=["POST"]),
        ],
        exception_handlers={HTTPException: not_found, Exception: server_error},
        lifespan=lifespan,
    )
    app.add_middleware(ResponseHeaders, headers=_request_id_header)
    app.state.gateway = gateway
    app.state.store = store
    app.state.audit = audit
    app.state.metrics = metrics
    fast_routes: dict[str, ASGIApp] = {"/v1/chat/completions": serve_chat, "/chat/completions": serve_chat}
    # Client-facing formats (ingress.d/): routes fixed at start; their mappings follow reloads.
    ingress_specs = dict(catalog.ingress)
    for name, spec in ingress_specs.items():
        fast_routes[spec.routes["chat"]] = ingress_handler(name)
        if "count_tokens" in spec.routes:
            fast_routes[spec.routes["count_tokens"]] = count_tokens_handler(name)
    return GatewayApp(app, fast_routes)


async def _answered_before_routing(request: Request) -> Response:  # pragma: no cover - never routed
    raise RuntimeError("POST chat requests are answered by GatewayApp")


def _credentials(store: Store, catalog: Catalog) -> Any:
    """A credential manager when some spec signs in or exchanges tokens; None otherwise."""
    if not any(spec.auth is not None and spec.auth.dynamic for spec in catalog.providers.values()):
        return None
    from ..credentials import CredentialManager

    try:
        return CredentialManager(store)
    except Exception as exc:  # e.g. no GAUD_SECRET_KEY for a shared database
        log.warning("signed-in providers are unavailable: %s", exc)
        return None


def _total_tokens(exchange: Exchange) -> int | None:
    usage = exchange.usage
    return int(usage.get("total_tokens") or 0) if usage else None


def _shared_state(settings: Settings) -> tuple[RateLimiter, ResponseCache]:
    """Rate-limit buckets and cache in Redis when `redis.url` is set, else in this process."""
    url = settings.get("redis.url")
    if url:
        return RedisRateLimiter(url), RedisCache(url)
    return MemoryRateLimiter(), MemoryCache(int(settings.get("cache.max_entries")))


def _first_admin(store: Store) -> None:
    """On first start with auth on and no keys: create an admin and print its key, once."""
    # No key at all yet (a database used with auth off holds only the local user).
    if not store.list_keys():
        key, _ = store.create_key("admin", role="admin")
        print(f"Created the first admin user. Its API key (shown once, store it now):\n  {key}", flush=True)


def _key_json(info: Any) -> dict[str, Any]:
    return {
        "id": info.lookup,
        "prefix": f"sk-gaud-{info.lookup}",
        "user": info.user_name,
        "role": info.role,
        "created_at": info.created_at,
        "revoked": info.revoked_at is not None,
        "budget_daily": info.budget_daily,
        "budget_monthly": info.budget_monthly,
    }


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
    for alias, route in (catalog.routes.get("aliases") or {}).items():
        if any(c["provider"] in ready for c in route.get("candidates", [])):
            seen[alias] = {"id": alias, "object": "model", "created": created, "owned_by": "gaud-engine"}
    for name in sorted(ready):
        ids = list(catalog.providers[name].models) + list((upstream_models or {}).get(name, []))
        for model_id in ids:
            key = f"{name}/{model_id}"
            seen.setdefault(key, {"id": key, "object": "model", "created": created, "owned_by": name})
    return list(seen.values())


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit status 143). By then the gateway
    has finished its requests and flushed its audit log, so it exits 0 instead."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)
