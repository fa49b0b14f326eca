"""The ASGI app: OpenAI-compatible routes over the gateway. Thin: parsing, errors, headers."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import Settings
from .errors import GatewayError, InvalidRequest, NotFound
from .gateway import Gateway
from .images import ImageFetcher
from .specs import Catalog
from .upstream import Upstream

__all__ = ["create_app"]

log = logging.getLogger("gaud.server")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: GatewayError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


class RequestIdMiddleware:
    """Adds `x-request-id` to every response: the client's own if it sent a sane one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
                request_id = value
                break
        request_id = request_id or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


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
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def create_app(catalog: Catalog, settings: Settings, *, upstream: Upstream | None = None) -> Starlette:
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
    gateway = Gateway(catalog, upstream, images)
    max_body = int(settings.get("limits.max_body_bytes"))
    started = time.time()

    async def chat_completions(request: Request) -> Response:
        try:
            body = await read_json(request, max_body)
            if body.get("stream"):
                result = await gateway.chat_stream(body)
                return StreamingResponse(
                    result.body,
                    media_type="text/event-stream",
                    headers={"cache-control": "no-cache", "x-accel-buffering": "no", **result.headers},
                )
            chat = await gateway.chat(body)
            return JSONResponse(chat.completion, headers=chat.headers)
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": model_list(catalog, int(started))})

    async def health(request: Request) -> Response:
        providers = {
            name: {"ready": not spec.missing_env(), "missing_env": spec.missing_env()}
            for name, spec in catalog.providers.items()
        }
        return JSONResponse({"status": "ok", "providers": providers, "breakers": gateway.router.breakers.states()})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return JSONResponse(
                {"error": {"message": f"Method {request.method} is not allowed here.", "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}},
                status_code=405,
            )
        return error_response(NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            {"error": {"message": "Internal gateway error.", "type": "server_error", "param": None, "code": "internal_error"}},
            status_code=500,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await upstream.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: not_found, Exception: server_error},
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
    app.state.gateway = gateway
    return app


def model_list(catalog: Catalog, created: int) -> list[dict[str, Any]]:
    """Aliases from routes.yaml, then every provider/model, in OpenAI's list shape."""
    seen: dict[str, dict[str, Any]] = {}
    for alias in (catalog.routes.get("aliases") or {}):
        seen[alias] = {"id": alias, "object": "model", "created": created, "owned_by": "gaud-engine"}
    for name, spec in catalog.providers.items():
        for model_id in spec.models:
            key = f"{name}/{model_id}"
            seen[key] = {"id": key, "object": "model", "created": created, "owned_by": name}
    return list(seen.values())
