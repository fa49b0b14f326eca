"""Checks that need more than one file: prices for every model, routes to known targets."""

from __future__ import annotations

import difflib

from ..errors import SpecError
from .catalog import Catalog

__all__ = ["cross_reference", "price_key"]


def price_key(catalog: Catalog, provider: str, model: str) -> str | None:
    """The pricing.d entry for a deployment: `provider/model` first, then the bare model id."""
    for key in (f"{provider}/{model}", model):
        if key in catalog.pricing:
            return key
    return None


def _escape(token: str) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def cross_reference(catalog: Catalog) -> list[SpecError]:
    problems: list[SpecError] = []
    for name, spec in catalog.providers.items():
        doc = catalog.files.get(spec.file)
        if doc is None or catalog.broken_pricing:  # an unreadable pricing file: its prices are unknown
            continue
        for model_id, info in spec.models.items():
            if info.free or price_key(catalog, name, model_id) is not None:
                continue
            if {f"{name}/{model_id}", model_id} & catalog.broken_prices:  # its price entry is already reported
                continue
            generated = catalog.files.get(catalog.generated_models.get(name, {}).get(model_id, ""))
            problems.append(
                (generated or doc).problem(
                    f"/models/{_escape(model_id)}",
                    f"model '{model_id}' has no price: add '{model_id}' (or '{name}/{model_id}') "
                    f"to a file in pricing.d/, or mark the model `free: true`",
                )
            )
    routes_path = catalog.root / "routes.yaml"
    routes_doc = next((d for d in catalog.files.values() if d.path == routes_path), None)
    for alias, route in (catalog.routes.get("aliases") or {}).items():
        for i, candidate in enumerate(route.get("candidates", [])):
            where = f"/aliases/{_escape(alias)}/candidates/{i}"
            provider = catalog.providers.get(candidate["provider"])
            if provider is None and candidate["provider"] in catalog.broken:
                continue
            if provider is None:
                hint = difflib.get_close_matches(candidate["provider"], list(catalog.providers), n=1)
                suffix = (
                    f"; did you mean '{hint[0]}'?"
                    if hint
                    else f"; it must name a file in providers.d/ (known: {', '.join(sorted(catalog.providers))})"
                )
                if routes_doc is not None:
                    problems.append(
                        routes_doc.problem(f"{where}/provider", f"unknown provider '{candidate['provider']}'{suffix}")
                    )
                continue
            known = set(provider.models) | {a for m in provider.models.values() for a in m.aliases}
            if not provider.models and price_key(catalog, provider.name, candidate["model"]) is None:
                # Listed only here: it needs a price, or a free declaration in the provider's spec.
                reported = {f"{provider.name}/{candidate['model']}", candidate["model"]} & catalog.broken_prices
                if routes_doc is not None and not catalog.broken_pricing and not reported:
                    problems.append(
                        routes_doc.problem(
                            f"{where}/model",
                            f"model '{candidate['model']}' has no price: add '{provider.name}/{candidate['model']}' "
                            f"to a file in pricing.d/, or list it under `models` in {provider.name}'s spec "
                            "(`free: true` with a `reason` if it costs nothing)",
                        )
                    )
                continue
            if provider.models and candidate["model"] not in known:
                hint = difflib.get_close_matches(candidate["model"], sorted(known), n=1)
                suffix = f"; did you mean '{hint[0]}'?" if hint else f"; it lists: {', '.join(sorted(provider.models))}"
                if routes_doc is not None:
                    problems.append(
                        routes_doc.problem(
                            f"{where}/model", f"provider '{provider.name}' has no model '{candidate['model']}'{suffix}"
                        )
                    )
    return problems
