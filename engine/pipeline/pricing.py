"""Cost of a request from the usage the provider reported and the prices in pricing.d/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..spec.catalog import Catalog
from ..spec.crossref import price_key

__all__ = ["Price", "cost_of", "price_for"]

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
