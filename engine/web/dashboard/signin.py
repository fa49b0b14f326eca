"""Upstream sign-in: the same flows as `gaud-engine login`, started and ended from the dashboard.

A flow runs as a task of this process; the page shows its state and the lines it prints (where to go
and which code to enter), never a token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .context import Dashboard, SignInFlow
from .sessions import Viewer

__all__ = ["run_flow", "signin_page", "signin_provider", "signin_providers", "signout", "start_signin"]

log = logging.getLogger("gaud.dashboard")

NO_SUCH_PROVIDER = "No such provider with a sign-in flow."


def signin_providers(gateway: Any) -> list[Any]:
    """The loaded provider specs whose credentials come from signing in."""
    return [spec for spec in gateway.catalog.providers.values() if spec.auth is not None and spec.auth.signs_in]


def signin_provider(gateway: Any, name: str) -> Any | None:
    return next((spec for spec in signin_providers(gateway) if spec.name == name), None)


async def signin_page(ui: Dashboard, request: Request, viewer: Viewer) -> Response:
    manager = ui.gateway.credentials
    rows = []
    for spec in signin_providers(ui.gateway):
        signed_in = await manager.signed_in(spec) if manager is not None else False
        rows.append({"name": spec.name, "type": spec.auth.type, "signed_in": signed_in,
                     "flow": ui.signins.get(spec.name)})
    running = any(r["flow"] and r["flow"]["state"] == "running" for r in rows)
    return ui.render(request, "signin.html", viewer, providers=rows, available=manager is not None,
                     refresh=3 if running else None)


async def run_flow(manager: Any, spec: Any, flow: SignInFlow) -> None:
    """Sign in to `spec`'s provider, recording the outcome in `flow` (the gateway keeps serving either way)."""
    try:
        # The flow prints where to go and which code to enter: shown on the page, no tokens.
        await manager.login(spec, echo=flow["lines"].append, open_url=lambda url: flow["lines"].append(url))
        flow["state"] = "done"
    except Exception as exc:  # noqa: BLE001 - the page shows why; the gateway keeps serving
        flow["state"], flow["error"] = "failed", getattr(exc, "message", type(exc).__name__)


async def start_signin(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    manager = ui.gateway.credentials
    spec = signin_provider(ui.gateway, request.path_params["provider"])
    if manager is None or spec is None:
        return ui.error(request, viewer, 404, NO_SUCH_PROVIDER)
    if (ui.signins.get(spec.name) or {}).get("state") == "running":
        return ui.redirect(request, "/signin")
    flow: SignInFlow = {"state": "running", "lines": [], "error": None}
    ui.signins[spec.name] = flow
    flow["task"] = asyncio.get_running_loop().create_task(run_flow(manager, spec, flow))
    log.info("dashboard: %s started the sign-in to %s", viewer.principal.user_name, spec.name)
    return ui.redirect(request, "/signin")


async def signout(ui: Dashboard, request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    manager = ui.gateway.credentials
    spec = signin_provider(ui.gateway, request.path_params["provider"])
    if manager is None or spec is None:
        return ui.error(request, viewer, 404, NO_SUCH_PROVIDER)
    await manager.logout(spec)
    ui.signins.pop(spec.name, None)
    log.info("dashboard: %s signed out of %s", viewer.principal.user_name, spec.name)
    return ui.redirect(request, "/signin")
