"""Which provider and upstream model serve a requested model name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import NotFound
from .catalog import Catalog
from .provider import ModelInfo, ProviderSpec

__all__ = ["Target", "resolve_model"]


@dataclass(frozen=True)
class Target:
    """One deployment: a provider and the upstream model id it is asked for."""

    provider: ProviderSpec
    model: str
    info: ModelInfo
    api_base: str | None = None
    #: Named by a spec (the provider's `models`, or a routes.yaml candidate). An unlisted
    #: `provider/model` (routing.allow_unlisted_models) has no price of its own.
    listed: bool = True
    #: A routes.yaml deployment's display name (`Candidate.deployment`); None: `provider/model`.
    label: str | None = None

    @cached_property
    def name(self) -> str:
        """The deployment's name and identity: what breakers, limits, latency, logs and audit key on."""
        return self.label or f"{self.provider.name}/{self.model}"


def _in_provider(spec: ProviderSpec, name: str) -> ModelInfo | None:
    info = spec.models.get(name)
    if info is not None:
        return info
    for candidate in spec.models.values():
        if name in candidate.aliases:
            return candidate
    return None


def resolve_model(catalog: Catalog, name: str, *, allow_unlisted: bool = False) -> list[Target]:
    """Candidate deployments for a requested model, in route order.

    `provider/model` resolves when the provider's spec lists the model (by id or alias); a model
    it does not list only with `allow_unlisted` (it then gets no limits and no price of its own:
    `Target.listed` is false). A bare name resolves through routes.yaml's aliases, else when
    exactly one provider spec lists it, not counting specs that defer bare ids to others.
    """
    if not isinstance(name, str) or not name:
        raise NotFound("model is required", param="model")
    aliases = catalog.routes.get("aliases") or {}
    route = aliases.get(name)
    if route is not None:
        targets = []
        for candidate in route.get("candidates", []):
            spec = catalog.providers.get(candidate["provider"])
            if spec is None:
                continue
            info = _in_provider(spec, candidate["model"]) or ModelInfo(candidate["model"])
            targets.append(Target(spec, info.id, info, candidate.get("api_base")))
        if targets:
            return targets
    provider_name, slash, model = name.partition("/")
    if slash and provider_name in catalog.providers:
        spec = catalog.providers[provider_name]
        listed = _in_provider(spec, model)
        if listed is not None:
            return [Target(spec, listed.id, listed)]
        if allow_unlisted:
            return [Target(spec, model, ModelInfo(model), listed=False)]
        raise NotFound(
            f"The model '{name}' is not listed by this gateway; ask for a listed model (GET /v1/models) "
            "or an alias.",
            param="model",
        )
    found = [(spec, listed) for spec in catalog.providers.values() if (listed := _in_provider(spec, name)) is not None]
    if len(found) > 1:  # a cloud or router defers to the model's own vendor (`defer_bare_ids`)
        found = [pair for pair in found if not pair[0].defer_bare_ids] or found
    if len(found) == 1:
        spec, info = found[0]
        return [Target(spec, info.id, info)]
    if found:
        options = ", ".join(f"{spec.name}/{info.id}" for spec, info in found)
        raise NotFound(
            f"The model '{name}' is served by several providers ({options}); ask for one as provider/model "
            "or add an alias in routes.yaml.",
            param="model",
        )
    raise NotFound(f"The model '{name}' does not exist or is not served by this gateway.", param="model")
