"""Cost of a request from the usage the provider reported and the prices in pricing.d/.

No billable request costs $0 unless its model is declared free (`free: true` with a `reason`):
a deployment without a price of its own (an unlisted `provider/model`, allowed by
routing.allow_unlisted_models, or a listed model whose price went missing) is billed at its
provider's ceiling, the highest listed price, and marked estimated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..spec.catalog import Catalog
from ..spec.crossref import price_key
from ..spec.models import Target

__all__ = ["FREE", "Price", "Quote", "ceiling_price", "cost_of", "price_for", "quote_for"]

log = logging.getLogger("gaud.pricing")

PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float
    cache_write: float
    tiers: tuple[tuple[int, Price], ...] = ()

    @classmethod
    def from_spec(cls, raw: dict[str, Any]) -> Price:
        tiers = tuple(
            sorted(((int(t["above"]), cls.from_spec({k: v for k, v in t.items() if k != "above"})) for t in raw.get("tiers", ())),
                   key=lambda pair: pair[0])
        )
        return cls(
            input=float(raw["input"]),
            output=float(raw["output"]),
            cached_input=float(raw.get("cached_input", raw["input"])),
            cache_write=float(raw.get("cache_write", raw["input"])),
            tiers=tiers,
        )

    def for_prompt(self, prompt_tokens: int) -> Price:
        """The tier that applies to a prompt of this size (the whole request is billed at it)."""
        chosen = self
        for above, tier in self.tiers:
            if prompt_tokens > above:
                chosen = tier
        return chosen

    @property
    def blended(self) -> float:
        """One number to compare deployments by (input + output)."""
        return self.input + self.output


#: What a model declared free costs.
FREE = Price(0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Quote:
    """The price a deployment is billed at; `estimated` when it is not the model's own."""

    price: Price
    estimated: bool = False


def price_for(catalog: Catalog, provider: str, model: str) -> Price | None:
    key = price_key(catalog, provider, model)
    if key is None:
        return None
    raw = {k: v for k, v in catalog.pricing[key].items() if not k.startswith("_")}
    return Price.from_spec(raw)


def cost_of(price: Price, usage: dict[str, Any]) -> float:
    """USD for an OpenAI usage object; cached reads and cache writes priced as such.

    `prompt_tokens` includes cached and cache-write tokens (the engine's usage mapping sums them).
    """
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    uncached = max(0, prompt - cached - written)
    p = price.for_prompt(prompt)
    total = uncached * p.input + cached * p.cached_input + written * p.cache_write + completion * p.output
    return total / PER_MILLION


def ceiling_price(catalog: Catalog, provider: str) -> Price | None:
    """The provider's highest listed price: input, output, cached read and cache write each at
    their maximum over the priced models its spec lists (tiers included). None when it lists no
    model with a price above zero: there is nothing to estimate from."""
    spec = catalog.providers.get(provider)
    if spec is None:
        return None
    fields = {"input": 0.0, "output": 0.0, "cached_input": 0.0, "cache_write": 0.0}
    for model_id in spec.models:
        price = price_for(catalog, provider, model_id)
        for level in (price, *(tier for _, tier in price.tiers)) if price is not None else ():
            for name in fields:
                fields[name] = max(fields[name], getattr(level, name))
    if not any(fields.values()):
        return None
    return Price(fields["input"], fields["output"], fields["cached_input"], fields["cache_write"])


def quote_for(catalog: Catalog, target: Target) -> Quote | None:
    """What a deployment is billed at: free only when declared free, its own price when it has
    one, else (estimated) its provider's ceiling. None: no price can be given, and the request
    must not be served."""
    if target.listed:
        if target.info.free:
            return Quote(FREE)
        own = price_for(catalog, target.provider.name, target.model)
        if own is not None:
            return Quote(own)
    ceiling = ceiling_price(catalog, target.provider.name)
    if target.listed:  # `validate` reports a listed model without a price: this catalog skipped it
        outcome = "billed at its provider's highest price (estimated)" if ceiling else "not served"
        log.error("no price for %s in pricing.d/ and not declared free: %s", target.name, outcome)
    return Quote(ceiling, estimated=True) if ceiling is not None else None
