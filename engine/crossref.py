"""Checks that need more than one file: prices for every model, routes to known targets."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from .errors import SpecError

if TYPE_CHECKING:
    from .specs import Catalog

__all__ = ["cross_reference", "price_key"]


def price_key(catalog: Catalog, provider: str, model: str) -> str | None:
    """The pricing.d entry for a deployment: `provider/model` first, then the bare model id."""
    for key in (f"{provider}/{model}", model):
        if key in catalog.pricing:
            return key
    return None


def cross_reference(catalog: Catalog) -> list[SpecError]:
    problems: list[SpecError] = []
    for name, spec in catalog.providers.items():
        doc = catalog.files.get(spec.file)
        for model_id, info in spec.models.items():
            if not info.free and price_key(catalog, name, model_id) is None and doc is not None:
                problems.append(
                    doc.problem(
                        f"/models/{model_id}",
                        f"model '{model_id}' has no price in pricing.d/ (add one, or mark it `free: true`)",
                    )
                )
    routes_doc = next((d for label, d in catalog.files.items() if label.endswith("routes.yaml")), None)
    for alias, route in (catalog.routes.get("aliases") or {}).items():
        for i, candidate in enumerate(route.get("candidates", [])):
            where = f"/aliases/{alias}/candidates/{i}"
            provider = catalog.providers.get(candidate["provider"])
            if provider is None and candidate["provider"] in catalog.broken:
                continue
            if provider is None:
                hint = difflib.get_close_matches(candidate["provider"], list(catalog.providers), n=1)
                suffix = f"; did you mean '{hint[0]}'?" if hint else ""
                if routes_doc is not None:
                    problems.append(
                        routes_doc.problem(f"{where}/provider", f"unknown provider '{candidate['provider']}'{suffix}")
                    )
                continue
            known = set(provider.models) | {a for m in provider.models.values() for a in m.aliases}
            if provider.models and candidate["model"] not in known:
                hint = difflib.get_close_matches(candidate["model"], sorted(known), n=1)
                suffix = f"; did you mean '{hint[0]}'?" if hint else ""
                if routes_doc is not None:
                    problems.append(
                        routes_doc.problem(
                            f"{where}/model", f"provider '{provider.name}' has no model '{candidate['model']}'{suffix}"
                        )
                    )
    return problems
