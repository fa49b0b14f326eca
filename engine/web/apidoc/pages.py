"""The public pages: `/` (landing), `/openapi.json`, `/docs` and the renderer's two assets.

Everything `/docs` needs is served here (static/: a small hand-written renderer, no third-party
code), so the page works without network access; its CSP allows only this origin.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .openapi import openapi_document

__all__ = ["ApiDocs", "gateway_version"]

STATIC = Path(__file__).parent / "static"
ASSETS = {"docs.js": "text/javascript; charset=utf-8", "docs.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
LINKS = {"docs": "/docs", "openapi": "/openapi.json", "ui": "/ui/", "health": "/health"}

#: The aliases the caller's key may call; None without a valid key.
Aliases = Callable[[Request], Awaitable[list[str] | None]]


def gateway_version() -> str:
    try:
        return version("gaud-engine")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@cache
def _static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


class ApiDocs:
    """The handlers, with the version and the caller's aliases they show."""

    def __init__(self, aliases: Aliases, version: str | None = None) -> None:
        self.aliases = aliases
        self.version = version or gateway_version()
        self._document: tuple[Any, bytes] | None = None  # (the catalog it was made from, the JSON)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.landing, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/docs/{asset}", self.asset, methods=["GET"]),
        ]

    async def openapi(self, request: Request) -> Response:
        """Made once per spec tree: the routes are fixed at start, a reload can change the formats' schemas."""
        catalog = request.app.state.gateway.catalog
        if self._document is None or self._document[0] is not catalog:
            document = openapi_document(request.app.routes, catalog, self.version)
            # json, not orjson: the OpenAI schemas hold integer bounds beyond 64 bits.
            self._document = (catalog, json.dumps(document, separators=(",", ":")).encode())
        return Response(self._document[1], media_type="application/json",
                        headers={"access-control-allow-origin": "*", "cache-control": "no-cache"})

    async def docs(self, request: Request) -> Response:
        return Response(_static("docs.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in ASSETS:
            raise HTTPException(404)
        return Response(_static(name), media_type=ASSETS[name],
                        headers={"cache-control": "max-age=300", "x-content-type-options": "nosniff"})

    async def landing(self, request: Request) -> Response:
        aliases = await self.aliases(request)
        if _wants_json(request.headers.get("accept", "")):
            body: dict[str, Any] = {"name": "gaud-engine", "version": self.version, "links": LINKS}
            if aliases is not None:
                body["models"] = aliases
            return Response(orjson.dumps(body), media_type="application/json", headers={"vary": "accept"})
        return Response(landing_html(self.version, aliases), media_type="text/html; charset=utf-8",
                        headers={**PAGE_HEADERS, "vary": "accept", "cache-control": "no-store"})


def _wants_json(accept: str) -> bool:
    """JSON unless the client asks for HTML (browsers do); a client that says nothing gets JSON."""
    accept = accept.lower()
    return "text/html" not in accept and ("json" in accept or accept.strip() in ("", "*/*"))


def landing_html(version: str, aliases: list[str] | None) -> str:
    links = "".join(
        f'<li><a href="{href}">{label}</a> {about}</li>'
        for href, label, about in (
            ("/docs", "API documentation", "(<a href=\"/openapi.json\">OpenAPI 3.1</a>)"),
            ("/ui/", "Dashboard", "for admins: usage, keys, health"),
            ("/health", "Health", ""),
        )
    )
    if aliases is None:
        models = ("<p>Send an API key (<code>Authorization: Bearer sk-gaud-...</code>) to see the models you may "
                  "call, or call <code>GET /v1/models</code>.</p>")
    elif aliases:
        items = "".join(f"<li><code>{html.escape(alias)}</code></li>" for alias in aliases)
        models = f'<h2>Aliases you may call</h2><ul id="aliases">{items}</ul>'
    else:
        models = '<h2>Aliases you may call</h2><p id="aliases">None.</p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>gaud-engine {html.escape(version)}</title><link rel="stylesheet" href="/docs/docs.css"></head>'
        f'<body class="landing"><main><h1>gaud-engine <span id="version">{html.escape(version)}</span></h1>'
        "<p>An OpenAI-compatible LLM gateway. Point an OpenAI client at <code>/v1</code> of this address.</p>"
        f'<ul id="links">{links}</ul>{models}</main></body></html>'
    )
