"""The overview page: requests and cost per user and per model, over 7 days and over 24 hours."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from ...accounts.budgets import day_start
from ...accounts.teams import team_totals
from . import queries
from .charts import stacked_bars
from .context import Dashboard
from .sessions import Viewer

__all__ = ["DAY", "HOUR", "Window", "overview", "overview_data", "usage_section"]

HOUR, DAY = 3600, 86400


@dataclass(frozen=True)
class Window:
    """A span of time shown as bars: `count` buckets of `bucket` seconds from `start`."""

    title: str
    start: float
    bucket: int
    count: int
    bucket_format: str  # strftime of a bar's label
    label_every: int  # label every n-th bar


def usage_section(engine: sa.Engine, window: Window) -> dict[str, Any]:
    """One section of the page: totals and four stacked-bar charts (cost and requests, per user and model)."""
    by_user = queries.time_series(engine, by="user", start=window.start, bucket_seconds=window.bucket,
                                  buckets=window.count)
    by_model = queries.time_series(engine, by="model", start=window.start, bucket_seconds=window.bucket,
                                   buckets=window.count)
    starts = by_user.bucket_starts

    def chart(name: str, data: dict[str, list[float]], money: bool) -> Any:
        return stacked_bars(name, starts, data, money=money, bucket_format=window.bucket_format,
                            label_every=window.label_every)

    requests = sum(sum(v) for v in by_user.requests.values())
    cost = sum(sum(v) for v in by_user.cost.values())
    return {
        "title": window.title,
        "requests": requests,
        "cost": cost,
        "charts": [
            chart("Cost per user", by_user.cost, True),
            chart("Requests per user", by_user.requests, False),  # type: ignore[arg-type]
            chart("Cost per model", by_model.cost, True),
            chart("Requests per model", by_model.requests, False),  # type: ignore[arg-type]
        ],
    }


def overview_data(engine: sa.Engine, now: float) -> dict[str, Any]:
    """The page's context: the last 7 days per day, the last 24 hours per hour, and 7-day totals."""
    hour_start = math.floor(now / HOUR) * HOUR - 23 * HOUR
    week_start = day_start(now) - 6 * DAY
    days = usage_section(engine, Window("Last 7 days, per day (UTC)", week_start, DAY, 7, "%a %d", 1))
    hours = usage_section(engine, Window("Last 24 hours, per hour (UTC)", hour_start, HOUR, 24, "%H:00", 3))
    rows = queries.totals(engine, since=week_start)
    return {"sections": [days, hours], "totals": rows, "since": week_start, "errors": sum(r.errors for r in rows),
            "teams": team_totals(engine, since=week_start)}


async def overview(ui: Dashboard, request: Request, viewer: Viewer) -> Response:
    data = await asyncio.to_thread(overview_data, ui.engine, ui.clock())
    return ui.render(request, "overview.html", viewer, **data)
