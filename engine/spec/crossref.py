"""Checks that need more than one file: prices for every model, routes to known targets."""

from __future__ import annotations

import difflib

from ..errors import SpecError
from .catalog import Catalog
from .yamlfile import YamlFile

__all__ = ["cross_reference", "price_key"]


def price_key(catalog: Catalog, provider: str, model: str) -> str | None:
    """The pricing.d entry for a deployment: `provider/model` first, then the bare model id."""
    for key in (f"{provider}/{model}", model):
        if key in catalog.pricing:
            return key
    return None


def _escape(token: str) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


#: How `spec new` marks the prices it cannot know (engine.cli.scaffold.PLACEHOLDER_SOURCE).
PLACEHOLDER_MARK = "TODO"


def placeholder_prices(catalog: Catalog) -> list[SpecError]:
    """Prices still as `spec new` wrote them (a `source` starting with TODO): the zeros under it
    are not the provider's prices. Found by the marker, not the zeros: `output: 0` is real for an
    embedding model."""
    problems = []
    for model, price in catalog.pricing.items():
        source = price.get("source")
        doc = catalog.files.get(price["_file"])
        if doc is not None and isinstance(source, str) and source.lstrip().upper().startswith(PLACEHOLDER_MARK):
            problems.append(doc.problem(
                f"{price['_pointer']}/source",
                f"placeholder price for '{model}': set input, output and source from the provider's pricing page",
            ))
    return problems


def cross_reference(catalog: Catalog) -> list[SpecError]:
    problems: list[SpecError] = placeholder_prices(catalog)
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
    if routes_doc is not None:
        problems.extend(_deployment_problems(catalog, routes_doc))
    return problems


def _deployment_problems(catalog: Catalog, routes_doc: YamlFile) -> list[SpecError]:
    """Candidates' own `env` rebinds only variables their spec declares; one deployment name is one
    deployment (its breaker, limits and latency are shared by every candidate that bears it)."""
    problems: list[SpecError] = []
    if catalog.route_table is None:
        return problems
    first: dict[str, tuple[str, tuple[object, ...]]] = {}
    for alias, route in catalog.route_table.routes.items():
        for i, candidate in enumerate(route.candidates):
            where = f"/aliases/{_escape(alias)}/candidates/{i}"
            provider = catalog.providers.get(candidate.provider)
            for declared in candidate.env:
                if provider is None or declared in provider.env:
                    continue
                hint = difflib.get_close_matches(declared, list(provider.env), n=1)
                suffix = (
                    f"; did you mean '{hint[0]}'?"
                    if hint
                    else f"; it declares: {', '.join(provider.env) or 'none'}"
                )
                problems.append(routes_doc.problem(
                    f"{where}/env/{_escape(declared)}",
                    f"provider '{provider.name}' declares no variable '{declared}' in `api.env` to rebind{suffix}",
                ))
            seen = first.setdefault(candidate.deployment, (f"alias '{alias}', candidate {i + 1}", candidate.binding()))
            if seen[1] != candidate.binding():
                field = "name" if candidate.name else "provider"
                problems.append(routes_doc.problem(
                    f"{where}/{field}",
                    f"deployment name '{candidate.deployment}' already names a different deployment ({seen[0]}: "
                    "another provider, model, api_base, env or headers); one name is one deployment (one breaker, "
                    "one rpm/tpm budget): give this one its own `name`",
                ))
    return problems
