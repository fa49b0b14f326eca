"""`gaud-engine price`: every candidate of a model name with its prices and, for given token
counts, what the request would cost there. The prices and the cost come from pipeline/pricing.py,
so this prints what the gateway bills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pipeline.pricing import FREE, Price, cost_of, price_for, quote_for
from ..spec.catalog import Catalog
from ..spec.models import Target

__all__ = ["PriceRow", "no_price_message", "price_rows", "render"]

COLUMNS = ("input", "output", "cached", "cache write")


@dataclass(frozen=True)
class PriceRow:
    """One candidate: its price (None: it has none), what it costs, and why when not its own price."""

    name: str
    price: Price | None
    cost: float | None = None
    note: str = ""


def no_price_message(names: list[str]) -> str:
    return (f"no price for {', '.join(names)} in pricing.d/; run `gaud-engine catalog import <litellm price file>` "
            "or add it by hand (see docs/catalog.md)")


def price_rows(catalog: Catalog, targets: list[Target], usage: dict[str, Any] | None) -> list[PriceRow]:
    """A listed model is free only when declared free, and without a price of its own it has none
    (`validate` reports it); an unlisted one is estimated at its provider's highest price."""
    rows = []
    for target in targets:
        if target.listed and not target.info.free and price_for(catalog, target.provider.name, target.model) is None:
            rows.append(PriceRow(target.name, None, note="no price in pricing.d/"))
            continue
        quote = quote_for(catalog, target)
        if quote is None:
            rows.append(PriceRow(target.name, None, note=f"no price, and {target.provider.name} lists none to estimate from"))
            continue
        note = (f"free: {target.info.free_reason or 'declared free'}" if quote.price is FREE
                else f"estimated: {target.provider.name}'s highest prices" if quote.estimated else "")
        cost = cost_of(quote.price, usage) if usage is not None else None
        rows.append(PriceRow(target.name, quote.price, cost, note))
    return rows


def _number(value: float) -> str:
    """A price as written: at least two decimals, no float noise (0.0375, 3.00)."""
    text = f"{value:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _cells(price: Price | None) -> list[str]:
    if price is None:
        return ["-"] * len(COLUMNS)
    return [_number(v) for v in (price.input, price.output, price.cached_input, price.cache_write)]


def render(rows: list[PriceRow], with_cost: bool) -> list[str]:
    """The table: a line per candidate, then one per price tier under it; columns aligned."""
    lines: list[tuple[str, list[str], str]] = []
    for row in rows:
        cost = (f"${row.cost:.6f}" if row.cost is not None else "-") if with_cost else None
        lines.append((row.name, _cells(row.price) + ([cost] if cost is not None else []), row.note))
        for above, tier in row.price.tiers if row.price is not None else ():
            lines.append((f"  prompts over {above} tokens", _cells(tier) + ([""] if with_cost else []), ""))
    header = ("deployment", [*COLUMNS, *(["cost"] if with_cost else [])], "")
    name_width = max(len(name) for name, _, _ in (header, *lines))
    widths = [max(len(cells[i]) for _, cells, _ in (header, *lines)) for i in range(len(header[1]))]
    out = []
    for name, cells, note in (header, *lines):
        text = name.ljust(name_width) + "".join("  " + cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        out.append(f"{text}  {note}".rstrip())
    return out
