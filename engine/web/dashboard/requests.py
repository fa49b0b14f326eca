"""The request log: every request in the audit log, filtered and paged on the server, newest first;
and one request's page (its attempts, tokens, cost, latency)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...errors import ERROR_KINDS
from . import queries, request_log
from .context import Dashboard
from .request_log import Cursor, FilterError, RequestFilter
from .sessions import Viewer

__all__ = ["request_detail", "requests_page"]

DEFAULT_PAGE = 50


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "")
    return int(raw) if raw.isdigit() and int(raw) in request_log.PAGE_SIZES else DEFAULT_PAGE


def _choices(ui: Dashboard) -> dict[str, list[str]]:
    """Suggestions for the filter fields: users, the routes' aliases and deployments, error kinds."""
    table = getattr(getattr(ui.gateway, "router", None), "table", None)
    routes = getattr(table, "routes", {}) or {}
    deployments = {f"{c.provider}/{c.model}" for route in routes.values() for c in route.candidates}
    return {"users": queries.user_names(ui.engine), "aliases": sorted(routes), "deployments": sorted(deployments),
            "kinds": sorted(ERROR_KINDS)}


def _links(base: str, flt: RequestFilter, limit: int, page: request_log.Page) -> dict[str, str | None]:
    keep = {**flt.items(), **({"limit": str(limit)} if limit != DEFAULT_PAGE else {})}
    return {
        "older": f"{base}/requests?{urlencode({**keep, 'before': str(page.older)})}" if page.older else None,
        "newer": f"{base}/requests?{urlencode({**keep, 'after': str(page.newer)})}" if page.newer else None,
        "newest": f"{base}/requests?{urlencode(keep)}",
    }


def _page_data(ui: Dashboard, request: Request) -> dict[str, Any]:
    """The page's context (in a thread: it queries the database)."""
    flt, limit = RequestFilter.from_query(request.query_params), _limit(request)
    before, after = (Cursor.parse(request.query_params.get(name, "")) for name in ("before", "after"))
    context: dict[str, Any] = {"filter": flt, "limit": limit, "sizes": request_log.PAGE_SIZES, "error": None,
                               "choices": _choices(ui), "paged": before is not None or after is not None}
    try:
        page = request_log.request_page(ui.engine, flt, limit=limit, before=before, after=after)
    except FilterError as exc:
        return {**context, "error": str(exc), "rows": [], "links": {"older": None, "newer": None, "newest": None}}
    return {**context, "rows": page.rows, "links": _links(ui.base(request), flt, limit, page)}


async def requests_page(ui: Dashboard, request: Request, viewer: Viewer) -> Response:
    data = await asyncio.to_thread(_page_data, ui, request)
    return ui.render(request, "requests.html", viewer, 400 if data["error"] else 200, **data)


async def request_detail(ui: Dashboard, request: Request, viewer: Viewer) -> Response:
    request_id = request.path_params["request_id"]
    rows = await asyncio.to_thread(request_log.request_rows, ui.engine, request_id)
    if not rows:
        return ui.error(request, viewer, 404, "No request with this id in the audit log.")
    for row in rows:
        row["attempt_list"] = request_log.attempts_of(row)
    return ui.render(request, "request.html", viewer, request_id=request_id, rows=rows)
