"""Read a LiteLLM-format model list (`model_prices_and_context_window.json`) into our model and price entries.

The list is one JSON object: model key -> facts (`litellm_provider`, `mode`, per-token prices,
`max_input_tokens`, `max_output_tokens`, `supports_*` flags). Which of its entries belong to which
provider spec is data, the spec's `catalog:` block (`ListRule`); this module only converts.
Prices per token become USD per million with `decimal` (3e-06 -> 3, never 3.0000000000000004).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

__all__ = ["Imported", "ListRule", "convert", "per_million"]

#: The list's modes a chat/embeddings gateway serves; `responses`-only models and the rest are skipped.
SERVED_MODES = ("chat", "embedding")

#: LiteLLM capability flag -> our capability name (a spec's `catalog.capabilities` overrides entries).
DEFAULT_CAPABILITIES = {
    "supports_function_calling": "tools",
    "supports_vision": "vision",
    "supports_reasoning": "reasoning",
    "supports_response_schema": "json_schema",
    "supports_prompt_caching": "prompt_cache",
}
#: The order capabilities are written in (the schema's order).
CAPABILITY_ORDER = ("tools", "vision", "thinking", "reasoning", "json_schema", "prompt_cache", "embeddings")

#: Our price field -> the list's per-token field.
PRICE_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
}
_TIER = re.compile(r"^(?P<field>" + "|".join(PRICE_FIELDS.values()) + r")_above_(?P<k>\d+)k_tokens$")
#: A dated id: `-20251001` or `-2025-04-14` at the end.
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{8}|\d{4}-\d{2}-\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ListRule:
    """A spec's `catalog:` block: which list entries are its models and how its prices are keyed."""

    provider: str
    sources: tuple[str, ...]
    key_prefix: str = ""
    #: "model" (bare id, shared by every provider serving it) or "provider/model".
    price_keys: str = "model"
    exclude: tuple[str, ...] = ()
    capabilities: dict[str, str] = field(default_factory=dict)
    #: Fold an undated id into the one dated id with the same data (as its alias): only for a
    #: provider whose undated ids are documented pointers to a snapshot. Elsewhere an undated id
    #: may be a model of its own that moves between snapshots, and stays one.
    fold_dated: bool = False

    @classmethod
    def from_spec(cls, provider: str, block: Any) -> ListRule | None:
        if not isinstance(block, dict):
            return None
        sources = block.get("litellm_provider")
        return cls(
            provider=provider,
            sources=tuple([sources] if isinstance(sources, str) else sources or ()),
            key_prefix=str(block.get("key_prefix", "")),
            price_keys=str(block.get("price_keys", "model")),
            exclude=tuple(block.get("exclude", ())),
            capabilities={**DEFAULT_CAPABILITIES, **(block.get("capabilities") or {})},
            fold_dated=bool(block.get("fold_dated", False)),
        )

    def model_id(self, key: str) -> tuple[str, bool]:
        """Our id for a list key, and whether the key carried the provider's prefix."""
        if self.key_prefix and key.startswith(self.key_prefix):
            return key[len(self.key_prefix):], True
        return key, False


@dataclass
class Imported:
    """What the list says about one model: its models.d entry, and its price (None: the list has none)."""

    model: dict[str, Any]
    price: dict[str, Any] | None


def per_million(value: Any) -> Decimal:
    """USD per token -> USD per million tokens, exact: 3e-06 -> 3, 1.25e-07 -> 0.125."""
    scaled = (Decimal(str(value)) * 10**6).normalize()
    return scaled.quantize(Decimal(1)) if scaled == scaled.to_integral_value() else scaled


def _price(facts: dict[str, Any]) -> dict[str, Any] | None:
    if facts.get("input_cost_per_token") is None:
        return None
    price: dict[str, Any] = {}
    for ours, theirs in PRICE_FIELDS.items():
        if facts.get(theirs) is not None:
            price[ours] = per_million(facts[theirs])
    price.setdefault("output", Decimal(0))  # embeddings lists give no output price
    tiers: dict[int, dict[str, Any]] = {}
    for key, value in facts.items():
        found = _TIER.match(key)
        if found and value is not None:
            ours = next(o for o, t in PRICE_FIELDS.items() if t == found["field"])
            tiers.setdefault(int(found["k"]) * 1000, {})[ours] = per_million(value)
    written = []
    for above in sorted(tiers):
        # A tier replaces the whole price, so a field the list leaves out keeps the base value.
        tier = {name: tiers[above].get(name, price[name]) for name in PRICE_FIELDS if name in price or name in tiers[above]}
        written.append({"above": above, **tier})
    if written:
        price["tiers"] = written
    return price


def _model(facts: dict[str, Any], rule: ListRule) -> dict[str, Any] | None:
    """The models.d entry, or None when the list lacks the limits every model needs."""
    embedding = facts.get("mode") == "embedding"
    context, output = facts.get("max_input_tokens"), facts.get("max_output_tokens")
    if not isinstance(context, int) or context <= 0 or (not embedding and (not isinstance(output, int) or output <= 0)):
        return None
    names = {ours for flag, ours in rule.capabilities.items() if facts.get(flag) is True}
    if embedding:
        names = {"embeddings"}
    entry: dict[str, Any] = {"context_window": context}
    if not embedding:
        entry["max_output_tokens"] = output
    entry["capabilities"] = [c for c in CAPABILITY_ORDER if c in names]
    deprecation = facts.get("deprecation_date")
    if isinstance(deprecation, str) and _DATE.match(deprecation):
        entry["deprecation"] = deprecation
    return entry


def _select(data: dict[str, Any], rule: ListRule) -> dict[str, dict[str, Any]]:
    """The list's served entries for one provider by our id; a prefixed key wins over a bare duplicate."""
    chosen: dict[str, tuple[bool, dict[str, Any]]] = {}
    for key, facts in data.items():
        if not isinstance(facts, dict) or facts.get("litellm_provider") not in rule.sources:
            continue
        if facts.get("mode") not in SERVED_MODES:
            continue
        model_id, prefixed = rule.model_id(key)
        if any(fnmatchcase(model_id, pattern) for pattern in rule.exclude):
            continue
        if model_id not in chosen or (prefixed and not chosen[model_id][0]):
            chosen[model_id] = (prefixed, facts)
    return {model_id: facts for model_id, (_, facts) in chosen.items()}


def _fold_dated(found: dict[str, Imported]) -> None:
    """An undated id with the same data as exactly one dated id becomes that model's alias."""
    dated: dict[str, list[str]] = {}
    for model_id in found:
        match = _DATED.match(model_id)
        if match and match["base"] in found:
            dated.setdefault(match["base"], []).append(model_id)
    for base, ids in dated.items():
        same = [i for i in ids if found[i].model == found[base].model and found[i].price == found[base].price]
        if len(same) == 1:
            found[same[0]].model = {"aliases": [base], **found[same[0]].model}
            del found[base]


def convert(data: dict[str, Any], rule: ListRule) -> tuple[dict[str, Imported], dict[str, str]]:
    """The list's chat and embedding models for one provider by our id, and the skipped ones with why."""
    selected = _select(data, rule)
    found: dict[str, Imported] = {}
    skipped: dict[str, str] = {}
    for model_id, facts in selected.items():
        model = _model(facts, rule)
        if model is None:
            skipped[model_id] = "the list gives no context window or max output tokens"
            continue
        found[model_id] = Imported(model, _price(facts))
    if rule.fold_dated:
        _fold_dated(found)
    return dict(sorted(found.items())), skipped
