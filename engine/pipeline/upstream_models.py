"""The upstreams' own model lists (GET <models endpoint>), read through each spec's `models_list`.

Off the hot path (httpx): fetched at start and on reload when `models.refresh_from_upstream` is
on; a provider that fails to answer simply contributes nothing.

httpx is imported where it is used, here and in the other modules off the hot path: importing it
also loads its command-line tool's libraries when they are installed (rich, pygments), ~16 MB
resident in every worker that never calls it (measured).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..pointer import compile_pointer, get

if TYPE_CHECKING:
    import httpx

    from ..spec.catalog import Catalog
    from ..spec.provider import ProviderSpec

__all__ = ["fetch_upstream_models"]

log = logging.getLogger("gaud.models")


async def _one(client: httpx.AsyncClient, spec: ProviderSpec) -> list[str]:
    listing = spec.models_list or {}
    url = spec.url("models", "", False)
    response = await client.get(url, headers=spec.headers_for(""))
    if response.status_code != 200:
        log.warning("%s: listing models gave HTTP %d", spec.name, response.status_code)
        return []
    items = get(response.json(), compile_pointer(listing["from"]))
    id_at = compile_pointer(listing["id"])
    prefix = listing.get("strip_prefix", "")
    ids = []
    for item in items if isinstance(items, list) else []:
        value = get(item, id_at)
        if isinstance(value, str) and value:
            ids.append(value[len(prefix):] if prefix and value.startswith(prefix) else value)
    return ids


async def fetch_upstream_models(catalog: Catalog, *, timeout: float = 10.0) -> dict[str, list[str]]:
    """Model ids per provider, for every provider that has credentials and a models endpoint."""
    specs = [s for s in catalog.providers.values() if s.models_list and "models" in s.endpoints and not s.missing_env()]
    import httpx

    async with httpx.AsyncClient(timeout=timeout) as client:
        results = await asyncio.gather(*(_one(client, s) for s in specs), return_exceptions=True)
    found: dict[str, list[str]] = {}
    for spec, result in zip(specs, results):
        if isinstance(result, BaseException):
            log.warning("%s: listing models failed: %s", spec.name, type(result).__name__)
            continue
        found[spec.name] = result
    return found
