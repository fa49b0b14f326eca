"""The health page: loaded providers, the routes and their candidates, and each deployment's circuit
breaker, in-flight requests and latency."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .context import Dashboard
from .sessions import Viewer

__all__ = ["candidate_problem", "deployment_rows", "health", "health_data", "provider_rows", "refresh_seconds",
           "route_rows", "shared_breakers_error"]

log = logging.getLogger("gaud.dashboard")


def provider_rows(catalog: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "description": spec.description, "missing": spec.missing_env(), "models": len(spec.models)}
        for name, spec in sorted(catalog.providers.items())
    ]


def candidate_problem(spec: Any) -> str | None:
    """Why a route's candidate cannot be called, given its provider's spec (None if not loaded); None when ready."""
    if spec is None:
        return "its provider is not loaded"
    hint = spec.setup_hint()
    return None if hint is None else f"not configured ({hint})"


def _candidate_status(spec: Any) -> str:
    return "not loaded" if spec is None else ("not configured" if spec.missing_env() else "ready")


def route_rows(catalog: Any, router: Any) -> tuple[list[dict[str, Any]], list[str], dict[str, set[str]]]:
    """Every route with its candidates; a warning per candidate that cannot be called; deployment -> aliases."""
    routes: list[dict[str, Any]] = []
    warnings: list[str] = []
    deployments: dict[str, set[str]] = {}
    for alias, route in sorted(router.table.routes.items()):
        candidates = []
        for c in route.candidates:
            name = f"{c.provider}/{c.model}"
            spec = catalog.providers.get(c.provider)
            problem = candidate_problem(spec)
            if problem is not None:
                warnings.append(f"route {alias}: candidate {name}: {problem}")
            deployments.setdefault(name, set()).add(alias)
            candidates.append({
                "name": name, "weight": c.weight, "timeout": c.timeout, "status": _candidate_status(spec),
                "when": c.when.expression if c.when is not None else None, "rpm": c.rpm, "tpm": c.tpm,
            })
        routes.append({"alias": alias, "strategy": route.strategy, "description": route.description,
                       "candidates": candidates, "cache": route.cache})
    return routes, warnings, deployments


def deployment_rows(router: Any, deployments: dict[str, set[str]]) -> list[dict[str, Any]]:
    """One row per deployment routed to or seen by a circuit breaker: its breaker, load and latency."""
    breakers = router.breakers.states()
    names = set(deployments) | set(breakers)
    rows = []
    for name in sorted(names):
        snapshot = breakers.get(name)
        latency = router.latency.get(name)
        rows.append({
            "name": name,
            "aliases": sorted(deployments.get(name, ())),
            "state": snapshot["state"] if snapshot else "closed",
            "seen": snapshot is not None,
            "failures": snapshot["consecutive_failures"] if snapshot else 0,
            "in_flight": router.in_flight.get(name, 0),
            "latency_ms": latency * 1000 if latency is not None else None,
        })
    return rows


def health_data(gateway: Any) -> dict[str, Any]:
    """The page's context, from the running gateway's catalog and router."""
    catalog, router = gateway.catalog, gateway.router
    routes, warnings, deployments = route_rows(catalog, router)
    table = router.table
    return {
        "providers": provider_rows(catalog), "routes": routes, "deployments": deployment_rows(router, deployments),
        "problems": [str(p) for p in catalog.problems], "warnings": warnings,
        "defaults": {"strategy": table.default_strategy, "breaker_failures": table.breaker_failures,
                     "breaker_cooldown": table.breaker_cooldown},
        "spec_root": str(catalog.root),
    }


def refresh_seconds(request: Request) -> int | None:
    """`?refresh=<seconds>` (5 to 3600): how often the page reloads itself; None for never."""
    refresh = request.query_params.get("refresh", "")
    return int(refresh) if refresh.isdigit() and 5 <= int(refresh) <= 3600 else None


async def shared_breakers_error(gateway: Any) -> str | None:
    """Fetch the breaker states shared between instances, if they are; what to show when that failed."""
    sync = getattr(gateway.router.breakers, "sync", None)
    if sync is None:
        return None
    try:
        await sync()
    except Exception as exc:  # noqa: BLE001 - whatever Redis raised, the page shows this instance's view
        log.warning("dashboard: could not fetch shared breaker states: %s", exc)
        return f"Shared breaker states could not be fetched ({type(exc).__name__}); showing this instance's view."
    return None


async def health(ui: Dashboard, request: Request, viewer: Viewer) -> Response:
    seconds = refresh_seconds(request)
    sync_error = await shared_breakers_error(ui.gateway)
    return ui.render(request, "health.html", viewer, refresh=seconds, sync_error=sync_error, **health_data(ui.gateway))
