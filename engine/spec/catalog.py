"""`Catalog`: everything loaded and compiled from one spec tree, as the rest of the engine sees it.

loader.py fills it; routing, pricing, model resolution and cross-reference checks read it. It holds
compiled parts by reference only, so this module imports none of their compilers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError, SpecLoadError
from .provider import ProviderSpec
from .routes import RouteTable
from .yamlfile import YamlFile

__all__ = ["Catalog"]


@dataclass
class Catalog:
    """Everything loaded from one spec tree."""

    root: Path
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    #: Client-facing formats (ingress.d/), by file stem: engine.spec.ingress.IngressSpec.
    ingress: dict[str, Any] = field(default_factory=dict)
    pricing: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, Any] = field(default_factory=dict)
    #: routes.yaml compiled with its CEL rules (None until the loader compiles it).
    route_table: RouteTable | None = None
    problems: list[SpecError] = field(default_factory=list)
    files: dict[str, YamlFile] = field(default_factory=dict)
    #: Names of spec files that exist but failed to load (cross-references to them are not re-reported).
    broken: set[str] = field(default_factory=set)
    #: Price keys whose pricing.d entry is broken (already reported).
    broken_prices: set[str] = field(default_factory=set)
    #: True when a pricing.d file could not be read at all: missing prices are then not reported.
    broken_pricing: bool = False
    #: provider -> model id -> label of the models.d file that lists it (a generated model).
    generated_models: dict[str, dict[str, str]] = field(default_factory=dict)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise SpecLoadError(self.problems)
