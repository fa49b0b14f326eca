"""routes.yaml compiled: aliases -> candidate deployments, strategies, and the retry, fallback and
`when` rules (CEL, compiled once by engine.spec.rules). The router (engine.pipeline.routing) plans
each request over this table."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import rules
from .rules import BACKENDS, DEFAULT_BACKEND, Rule, RuleCompileError, compile_rule

__all__ = [
    "DEFAULT_FALLBACK",
    "DEFAULT_RETRY",
    "STRATEGIES",
    "Backoff",
    "Candidate",
    "Policy",
    "Route",
    "RouteTable",
    "RoutesError",
    "compile_routes",
]

STRATEGIES = ("priority", "round-robin", "weighted", "least-busy", "lowest-cost", "lowest-latency")

# As routes.yaml's defaults.
DEFAULT_RETRY = (
    'error.kind in ["rate_limit", "timeout", "overloaded", "upstream_5xx", "incomplete_stream"] && attempt <= 3'
    ' || error.kind == "connection" && attempt <= 1'
)
DEFAULT_FALLBACK = (
    'error.kind in ["rate_limit", "timeout", "overloaded", "upstream_5xx", "connection", "response_parsing", "incomplete_stream",'
    ' "context_window_exceeded", "content_filter", "authentication", "permission", "not_found", "not_configured"]'
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: initial * multiplier**(attempt-1), capped, +-jitter."""

    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 8.0
    jitter: float = 0.2
    max_retry_after: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before retrying after `attempt` failed; None = the wait is too long."""
        base = min(self.max, self.initial * self.multiplier ** (attempt - 1))
        base *= 1 + self.jitter * (2 * rng.random() - 1)
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            base = max(base, retry_after)
        return base


@dataclass
class Policy:
    retry: Rule | None
    fallback: Rule | None
    backoff: Backoff


@dataclass
class Candidate:
    provider: str
    model: str
    weight: float = 1.0
    timeout: float | None = None
    api_base: str | None = None
    when: Rule | None = None
    rpm: float | None = None
    tpm: float | None = None
    #: Per attempt: seconds in all, and without content in a stream (None: upstream.* settings).
    total_timeout: float | None = None
    idle_timeout: float | None = None
    #: `stream: emulate`: a streamed request is served from one non-streaming call.
    emulate_stream: bool = False
    #: `name`: the display name given in routes.yaml (None: derived, see `deployment`).
    name: str | None = None
    #: `env`: declared variable -> the variable this deployment reads instead.
    env: dict[str, str] = field(default_factory=dict)
    #: `headers`: extra header templates; None removes the spec's header of that name.
    headers: dict[str, str | None] = field(default_factory=dict)
    #: The provider spec as this deployment sees it (its `env` and `headers` applied), set by the
    #: loader; None when the candidate changes neither and the catalog's spec serves it as is.
    spec: Any = None

    @cached_property
    def deployment(self) -> str:
        """The deployment's display name and identity (breakers, limits, latency, audit): `name`, else
        `provider/model`, then `@api_base` and `[VAR,...]` (the variables it reads instead) when set."""
        if self.name:
            return self.name
        label = f"{self.provider}/{self.model}"
        if self.api_base:
            label += f"@{self.api_base}"
        if self.env:
            label += "[" + ",".join(self.env[k] for k in sorted(self.env)) + "]"
        return label

    def binding(self) -> tuple[object, ...]:
        """What makes two candidates the same deployment (beside the model's own options)."""
        return (self.provider, self.model, self.api_base, sorted(self.env.items()), sorted(self.headers.items(), key=str))


@dataclass
class Route:
    name: str
    strategy: str
    candidates: list[Candidate]
    policy: Policy
    when: Rule | None = None
    description: str = ""
    cache: dict[str, Any] | None = None
    #: `drop_unsupported_params`; None: the setting `routing.drop_unsupported_params` decides.
    drop_unsupported_params: bool | None = None

    @cached_property
    def has_conditions(self) -> bool:
        """Whether planning evaluates a `when` rule (the route's or a candidate's)."""
        return self.when is not None or any(c.when is not None for c in self.candidates)


class RoutesError(ValueError):
    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


def _rule(expression: str | None, pointer: str) -> Rule | None:
    """Compile on every backend, so a rule that only one of them accepts is refused at load
    (`validate`); a serving process compiles on the default backend only (`rules.CHECK_PORTABILITY`)."""
    if expression is None:
        return None
    compiled = {}
    for backend in BACKENDS if rules.CHECK_PORTABILITY else [DEFAULT_BACKEND]:
        try:
            compiled[backend] = compile_rule(expression, backend)
        except RuleCompileError as exc:
            label = "" if len(BACKENDS) == 1 else f" ({backend} CEL backend)"
            raise RoutesError(pointer, f"bad CEL expression{label}: {exc}") from None
    return compiled[DEFAULT_BACKEND]


def _policy(raw: dict[str, Any], base: Policy | None, pointer: str) -> Policy:
    backoff_raw = raw.get("backoff")
    backoff = base.backoff if base else Backoff()
    if backoff_raw:
        backoff = Backoff(**{**backoff.__dict__, **backoff_raw})
    retry = _rule(raw["retry"], f"{pointer}/retry") if "retry" in raw else (base.retry if base else _rule(DEFAULT_RETRY, pointer))
    fallback = (
        _rule(raw["fallback"], f"{pointer}/fallback")
        if "fallback" in raw
        else (base.fallback if base else _rule(DEFAULT_FALLBACK, pointer))
    )
    return Policy(retry=retry, fallback=fallback, backoff=backoff)


@dataclass
class RouteTable:
    routes: dict[str, Route]
    default_policy: Policy
    default_strategy: str
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0


def compile_routes(raw: dict[str, Any]) -> RouteTable:
    """Compile routes.yaml (already schema-valid). Raises RoutesError with a pointer."""
    defaults = raw.get("defaults") or {}
    policy = _policy(defaults, None, "/defaults")
    strategy = defaults.get("strategy", "priority")
    routes = {}
    for name, route in (raw.get("aliases") or {}).items():
        where = f"/aliases/{name}"
        candidates = [
            Candidate(
                provider=c["provider"],
                model=c["model"],
                weight=float(c.get("weight", 1.0)),
                timeout=c.get("timeout"),
                api_base=c.get("api_base"),
                when=_rule(c.get("when"), f"{where}/candidates/{i}/when"),
                rpm=c.get("rpm"),
                tpm=c.get("tpm"),
                total_timeout=c.get("total_timeout"),
                idle_timeout=c.get("idle_timeout"),
                emulate_stream=c.get("stream") == "emulate",
                name=c.get("name"),
                env=dict(c.get("env") or {}),
                headers=dict(c.get("headers") or {}),
            )
            for i, c in enumerate(route.get("candidates", []))
        ]
        routes[name] = Route(
            name=name,
            strategy=route.get("strategy", strategy),
            candidates=candidates,
            policy=_policy(route, policy, where),
            when=_rule(route.get("when"), f"{where}/when"),
            description=route.get("description", ""),
            cache=route.get("cache"),
            drop_unsupported_params=route.get("drop_unsupported_params"),
        )
    breaker = defaults.get("breaker") or {}
    return RouteTable(
        routes, policy, strategy, int(breaker.get("failures", 5)), float(breaker.get("cooldown", 30.0))
    )
