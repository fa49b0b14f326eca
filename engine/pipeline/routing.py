"""Routes: alias -> candidate deployments, ordered by a strategy, filtered by CEL `when` rules,
open circuit breakers and missing credentials; plus the retry/fallback policy that applies when an
attempt fails.

Strategies: priority (as listed), round-robin, weighted (random, by weight), least-busy (fewest
in flight), lowest-cost (pricing.d), lowest-latency (moving average of upstream latency).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import NotFound
from ..spec.catalog import Catalog
from ..spec.models import Target, resolve_model
from ..spec.provider import ProviderSpec
from ..spec.routes import Candidate, Policy, Route, RouteTable, compile_routes
from .breaker import BreakerBoard
from .pricing import Quote, price_for, quote_for
from .tokens import estimate_prompt_tokens

__all__ = ["Plan", "PlannedTarget", "Router", "activation", "explain", "request_facts"]

#: The activation of a route without conditions: no rule reads it, so it is never built.
_NO_FACTS: Mapping[str, Any] = MappingProxyType({})

@dataclass
class PlannedTarget:
    target: Target
    timeout: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    #: The deployment's own `total_timeout` / `idle_timeout` (None: the upstream.* settings).
    total_timeout: float | None = None
    idle_timeout: float | None = None
    #: The candidate's `stream: emulate` (routes.yaml).
    emulate_stream: bool = False
    #: Drop what the deployment cannot express instead of refusing (`drop_unsupported_params`).
    drop_unsupported: bool = False


@dataclass
class Plan:
    alias: str
    route: Route | None
    targets: list[PlannedTarget]
    policy: Policy
    facts: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _tags(body: dict[str, Any]) -> list[str]:
    raw = body.get("tags")
    if raw is None and isinstance(body.get("metadata"), dict):
        raw = body["metadata"].get("tags")
    if isinstance(raw, str):
        return [t.strip() for t in raw.split(",") if t.strip()]
    if isinstance(raw, list):
        return [str(t) for t in raw][:32]
    return []


def request_facts(body: dict[str, Any]) -> dict[str, Any]:
    """The projected request facts rules see: scalars and a short list, never message text."""
    user = body.get("user")
    return {
        "model": str(body.get("model") or ""),
        "n_messages": len(body.get("messages") or []),
        "n_tools": len(body.get("tools") or []) if isinstance(body.get("tools"), list) else 0,
        "estimated_tokens": estimate_prompt_tokens(body),
        "stream": bool(body.get("stream")),
        "user": user if isinstance(user, str) else "",
        "tags": _tags(body),
    }


def activation(
    facts: dict[str, Any],
    *,
    attempt: int = 0,
    target: Target | None = None,
    error: Any = None,
) -> dict[str, Any]:
    """Every declared variable bound, whatever happened so far."""
    status = getattr(error, "upstream_status", None) or (getattr(error, "status", 0) if error is not None else 0)
    retry_after = getattr(error, "retry_after", None)
    return {
        "request": facts,
        "attempt": attempt,
        "deployment": {
            "provider": target.provider.name if target else "",
            "model": target.model if target else "",
            "name": target.name if target else "",
        },
        "response": {"status": int(status or 0)},
        "error": {
            "kind": getattr(error, "kind", "") if error is not None else "",
            "status": int(status or 0),
            "retry_after": float(retry_after or 0.0),
        },
    }


class Router:
    """Plans the deployments for a request and keeps the live facts strategies need."""

    def __init__(
        self,
        catalog: Catalog,
        table: RouteTable | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        price_of: Callable[[str, str], float | None] | None = None,
        allow_unlisted: bool = False,
        drop_unsupported: bool = False,
    ) -> None:
        self.catalog = catalog
        #: routing.allow_unlisted_models: serve a `provider/model` its spec does not list
        #: (billed at the provider's highest price, estimated) instead of a 404.
        self.allow_unlisted = allow_unlisted
        #: routing.drop_unsupported_params, for requests whose alias does not say.
        self.drop_unsupported = drop_unsupported
        self._quotes: dict[tuple[str, bool], Quote | None] = {}
        self.table = table or catalog.route_table or compile_routes(catalog.routes)
        self.rng = rng or random.Random()
        self.breakers = BreakerBoard(failures=self.table.breaker_failures, cooldown=self.table.breaker_cooldown, clock=clock)
        self.in_flight: dict[str, int] = {}
        self.latency: dict[str, float] = {}
        self._turn: dict[str, int] = {}
        self._targets: dict[int, Target] = {}
        self.price_of = price_of or self._list_price
        #: Provider -> what to set, for providers whose required variables are unset. Read from the
        #: catalog once (its environment is read at load), so skipping them costs a dict lookup;
        #: `rebound` (a reload) computes it again. Providers that sign in may still be usable.
        self.unconfigured: dict[str, str] = {
            name: hint for name, spec in catalog.providers.items() if (hint := spec.setup_hint()) is not None
        }
        self._deployment_hints: dict[str, str] = {}

    def _target(self, candidate: Candidate) -> Target:
        """The deployment of a route candidate, resolved once per catalog. A candidate names its
        model in routes.yaml, so it counts as listed even where its provider lists no models; its
        own `env`/`headers` give it its own spec (Candidate.spec), its name is its identity."""
        key = id(candidate)  # the compiled candidates live as long as the catalog (and this router)
        target = self._targets.get(key)
        if target is None:
            target = resolve_model(self.catalog, f"{candidate.provider}/{candidate.model}", allow_unlisted=True)[0]
            spec = candidate.spec or target.provider
            target = Target(spec, target.model, target.info, candidate.api_base, listed=True, label=candidate.deployment)
            self._targets[key] = target
            if spec.deployment is not None and (hint := spec.setup_hint()) is not None:
                self._deployment_hints[target.name] = hint
        return target

    def setup_hint(self, spec: ProviderSpec, deployment: str) -> str | None:
        """What to set for a deployment whose required variables are unset (Router.unconfigured
        for the catalog's specs, computed once per deployment for those with their own `env`)."""
        if spec.deployment is None:
            return self.unconfigured.get(spec.name)
        return self._deployment_hints.get(deployment)

    def quote(self, target: Target) -> Quote | None:
        """What a deployment is billed at (engine.pipeline.pricing.quote_for), once per catalog."""
        key = (target.name, target.listed)
        try:
            return self._quotes[key]
        except KeyError:
            quote = self._quotes[key] = quote_for(self.catalog, target)
            return quote

    def rebound(self, catalog: Catalog) -> Router:
        """A router for a reloaded catalog that keeps this one's live state."""
        new = Router(catalog, rng=self.rng, allow_unlisted=self.allow_unlisted, drop_unsupported=self.drop_unsupported)
        new.breakers, new.in_flight, new.latency, new._turn = self.breakers, self.in_flight, self.latency, self._turn
        return new

    def _list_price(self, provider: str, model: str) -> float | None:
        price = price_for(self.catalog, provider, model)
        return price.blended if price is not None else None

    # -- live facts -----------------------------------------------------------------------------
    def started(self, deployment: str) -> None:
        self.in_flight[deployment] = self.in_flight.get(deployment, 0) + 1

    def finished(self, deployment: str, latency: float | None) -> None:
        self.in_flight[deployment] = max(0, self.in_flight.get(deployment, 1) - 1)
        if latency is not None:
            previous = self.latency.get(deployment)
            self.latency[deployment] = latency if previous is None else 0.8 * previous + 0.2 * latency

    # -- planning -------------------------------------------------------------------------------
    def plan(self, body: dict[str, Any], *, explain: bool = False) -> Plan:
        """Deployments to try, in order. Breakers are consulted per attempt, not here."""
        name = body.get("model") if isinstance(body, dict) else None
        facts = request_facts(body)
        route = self.table.routes.get(name) if isinstance(name, str) else None
        notes: list[str] = []
        if route is None:
            targets = resolve_model(self.catalog, name, allow_unlisted=self.allow_unlisted)  # type: ignore[arg-type]
            for target in targets:
                # Never served at $0 without being declared free. A listed model has a price or is
                # free in any catalog that is served (`validate` runs first); an unlisted one is
                # billed at its provider's highest price, if the provider has one.
                if not target.listed and self.quote(target) is None:
                    raise NotFound(
                        f"The model '{name}' has no price and {target.provider.name} lists no priced model "
                        "to estimate one from; it cannot be served.",
                        param="model",
                    )
            planned = [PlannedTarget(t, drop_unsupported=self.drop_unsupported) for t in targets]
            if explain:
                self._note_skips(planned, notes)
            return Plan(str(name), None, planned, self.table.default_policy, facts, notes)
        act = activation(facts) if route.has_conditions else _NO_FACTS  # only rules read it
        if route.when is not None and not route.when.matches(act):
            raise NotFound(f"No route of '{route.name}' applies to this request.", param="model")
        eligible: list[tuple[Candidate, Target]] = []
        for candidate in route.candidates:
            spec = self.catalog.providers.get(candidate.provider)
            if spec is None:
                continue
            target = self._target(candidate)
            if candidate.when is not None:
                matched = candidate.when.matches(act)
                if explain:
                    verdict = "true" if matched else "false, skipped"
                    notes.append(f"{target.name}: when `{candidate.when.expression}` -> {verdict}")
                if not matched:
                    continue
            eligible.append((candidate, target))
        if not eligible:
            raise NotFound(f"No deployment of '{route.name}' applies to this request.", param="model")
        drop = self.drop_unsupported if route.drop_unsupported_params is None else route.drop_unsupported_params
        planned = [
            PlannedTarget(t, c.timeout, c.rpm, c.tpm, c.total_timeout, c.idle_timeout, c.emulate_stream, drop)
            for c, t in self._order(route, eligible)
        ]
        if explain:
            self._note_skips(planned, notes)
        return Plan(route.name, route, planned, route.policy, facts, notes)

    def _note_skips(self, planned: list[PlannedTarget], notes: list[str]) -> None:
        for item in planned:
            hint = self.setup_hint(item.target.provider, item.target.name)
            if hint is not None:
                notes.append(f"{item.target.name}: would be skipped, not configured ({hint})")
            elif self.breakers[item.target.name].snapshot()["state"] == "open":
                notes.append(f"{item.target.name}: would be skipped, circuit breaker open")

    def _order(self, route: Route, eligible: list[tuple[Candidate, Target]]) -> list[tuple[Candidate, Target]]:
        strategy = route.strategy
        if strategy == "round-robin" and eligible:
            turn = self._turn.get(route.name, 0)
            self._turn[route.name] = turn + 1
            start = turn % len(eligible)
            return eligible[start:] + eligible[:start]
        if strategy == "weighted":
            # Weighted random order without replacement (Efraimidis-Spirakis keys).
            keyed = [(self.rng.random() ** (1.0 / max(c.weight, 1e-9)), i) for i, (c, _) in enumerate(eligible)]
            return [eligible[i] for _, i in sorted(keyed, reverse=True)]
        if strategy == "least-busy":
            return sorted(eligible, key=lambda ct: self.in_flight.get(ct[1].name, 0))
        if strategy == "lowest-cost":
            def cost(ct: tuple[Candidate, Target]) -> float:
                price = self.price_of(ct[1].provider.name, ct[1].model)
                return float("inf") if price is None else price

            return sorted(eligible, key=cost)
        if strategy == "lowest-latency":
            # Deployments without a measurement go first, so each gets measured.
            return sorted(eligible, key=lambda ct: self.latency.get(ct[1].name, -1.0))
        return eligible


def explain(router: Router, body: dict[str, Any]) -> str:
    """What the router would do with a request, without calling anything (`routes explain`)."""
    plan = router.plan(body, explain=True)
    facts = plan.facts
    lines = [
        "request: " + " ".join(f"{k}={_show(v)}" for k, v in facts.items()),
        f"route: {plan.alias}"
        + (f" (alias, strategy {plan.route.strategy})" if plan.route else " (no alias: resolved directly)"),
    ]
    if plan.route is not None and plan.route.when is not None:
        lines.append(f"alias when `{plan.route.when.expression}` -> true")
    lines.append("candidates, in order:")
    for i, item in enumerate(plan.targets, 1):
        timeout = f" (timeout {item.timeout:g} s)" if item.timeout else ""
        lines.append(f"  {i}. {item.target.name}{timeout}")
        lines.extend(f"     {line}" for line in _deployment_lines(item.target, bool(facts["stream"])))
    if plan.notes:
        lines.append("rules:")
        lines.extend(f"  {note}" for note in plan.notes)
    policy = plan.policy
    lines.append(f"retry: {policy.retry.expression if policy.retry else 'never'}")
    lines.append(f"fallback: {policy.fallback.expression if policy.fallback else 'never'}")
    b = policy.backoff
    lines.append(
        f"backoff: {b.initial:g} s x{b.multiplier:g} per attempt, at most {b.max:g} s, jitter {b.jitter:.0%}, "
        f"retry-after honoured up to {b.max_retry_after:g} s"
    )
    return "\n".join(lines)


def _deployment_lines(target: Target, stream: bool) -> list[str]:
    """Where a deployment sends a request and which variables it reads: names and whether they are
    set, never a value (a secret's shows as `${VARIABLE}` in the URL)."""
    spec = target.provider
    lines = [] if target.name == f"{spec.name}/{target.model}" else [f"{spec.name}/{target.model}"]
    if "chat" in spec.endpoints:
        lines.append("url: " + spec.shown_url("chat", target.model, stream, target.api_base))
    variables = [
        (name if spec.variable(name) == name else f"{name} <- {spec.variable(name)}")
        + (" (set)" if spec.env_values.get(name) else " (unset, required)" if var.required else " (unset)")
        for name, var in spec.env.items()
    ]
    if variables:
        lines.append("env: " + ", ".join(variables))
    return lines


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value) if value != "" else '""'
