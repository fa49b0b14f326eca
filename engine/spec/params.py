"""What a provider can express of a request, declared in its spec (`request.params`), checked per
deployment before any upstream call: nothing a client asks for is silently dropped.

An entry names a request parameter (or a feature such as `server_tools`) and what happens when a
request uses it and this provider cannot express it:

- `refuse`: a 400 (`unsupported_parameter`) naming the parameter and the deployment, unless the
  operator allows dropping (`routing.drop_unsupported_params`, globally or per route);
- `ignore`: safely ignorable, always dropped.

Either way a dropped parameter is named in the response header `x-gaud-dropped-params`. The check
is compiled once per spec; a request that uses none of the names pays one set test on its keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from ..mapping import compile_condition
from .common import SpecCompileError

__all__ = ["FEATURES", "KNOWN_PARAMS", "ParamRule", "ParamRules", "UnsupportedParameter", "compile_params"]


#: Request parameters a spec may declare, with the values that ask for nothing (a client sending
#: `n: 1` or `logprobs: false` uses no feature). `messages` and `model` are always expressible.
KNOWN_PARAMS: dict[str, tuple[Any, ...]] = {
    "audio": (), "frequency_penalty": (0, 0.0), "function_call": (), "functions": ([],),
    "logit_bias": ({},), "logprobs": (False,), "max_completion_tokens": (), "max_tokens": (),
    "metadata": ({},), "modalities": (["text"],), "n": (1,), "parallel_tool_calls": (True,),
    "prediction": (), "presence_penalty": (0, 0.0), "prompt_cache_key": (), "reasoning_effort": (),
    "response_format": ({"type": "text"},), "safety_identifier": (), "seed": (), "service_tier": ("auto",),
    "stop": ([],), "store": (False,), "stream_options": (), "temperature": (), "tool_choice": (),
    "tools": ([],), "top_logprobs": (0,), "top_p": (), "user": (), "verbosity": (), "web_search_options": (),
    # Gateway extensions of the canonical request (ingress formats, LiteLLM-style clients).
    "thinking": (), "cached_content": (), "output_config": (),
}


def _server_tools(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and any(isinstance(t, dict) and t.get("type", "function") != "function" for t in tools)


def _without_server_tools(body: dict[str, Any]) -> None:
    tools = [t for t in body["tools"] if not (isinstance(t, dict) and t.get("type", "function") != "function")]
    if tools:
        body["tools"] = tools
    else:  # nothing left to choose from
        body.pop("tools", None)
        body.pop("tool_choice", None)


@dataclass(frozen=True)
class Feature:
    """A feature that is part of a parameter: where it lives, how to see it, how to drop it."""

    key: str
    used: Callable[[Mapping[str, Any]], bool]
    drop: Callable[[dict[str, Any]], None]


#: Features a spec may declare besides the parameters: `server_tools` are tools whose `type` is
#: not `function` (a provider's hosted tools such as web search).
FEATURES: dict[str, Feature] = {
    "server_tools": Feature("tools", _server_tools, _without_server_tools),
}


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


def _used_by_default(name: str) -> Callable[[Mapping[str, Any]], bool]:
    neutral = KNOWN_PARAMS[name]

    def used(body: Mapping[str, Any]) -> bool:
        value = body.get(name)
        if value is None:
            return False
        return not any(value == n and type(value) is type(n) for n in neutral)

    return used


@dataclass(frozen=True)
class ParamRule:
    name: str
    key: str  # the request key it lives in
    action: str  # refuse | ignore
    used: Callable[[Mapping[str, Any]], bool]
    #: The spec's own mapping leaves the part out (`report_only`): the gateway only reports it.
    report_only: bool
    message: str | None

    def drop(self, body: dict[str, Any]) -> None:
        if self.report_only:
            return
        feature = FEATURES.get(self.name)
        if feature is not None:
            feature.drop(body)
        else:
            body.pop(self.key, None)


class ParamRules:
    """A spec's compiled `request.params`."""

    def __init__(self, rules: list[ParamRule]) -> None:
        self.rules = rules
        #: The request keys any rule looks at: a body with none of them is not looked at further.
        self.keys = frozenset(r.key for r in rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def fit(self, body: dict[str, Any], deployment: str, *, drop: bool = False) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The body this deployment can take, and the names of what was dropped from it; raises
        UnsupportedParameter for the first parameter it refuses (`drop`: the operator allows
        dropping refused parameters)."""
        if self.keys.isdisjoint(body):
            return body, ()
        hits = [rule for rule in self.rules if rule.key in body and rule.used(body)]
        if not hits:
            return body, ()
        for rule in hits:
            if rule.action == "refuse" and not drop:
                raise self.refusal(rule, deployment)
        fitted = dict(body)
        for rule in hits:
            rule.drop(fitted)
        return fitted, tuple(dict.fromkeys(rule.name for rule in hits))

    def refusal(self, rule: ParamRule, deployment: str) -> UnsupportedParameter:
        why = f": {rule.message}" if rule.message else ""
        error = UnsupportedParameter(
            f"{deployment} does not support '{rule.name}'{why}. Send the request without it, use a model that "
            "supports it, or let the gateway drop it (routing.drop_unsupported_params).",
            param=rule.name,
        )
        error.before_upstream = True
        return error


NO_RULES = ParamRules([])


def _hint(name: str) -> str:
    options = [*KNOWN_PARAMS, *FEATURES]
    close = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(options))}"


def compile_params(raw: Mapping[str, Any] | None) -> ParamRules:
    """Compile `request.params` (schema-valid). Raises SpecCompileError naming an unknown parameter."""
    rules = []
    for name, entry in (raw or {}).items():
        where = f"/request/params/{name}"
        if name not in KNOWN_PARAMS and name not in FEATURES:
            raise SpecCompileError(where, f"unknown request parameter '{name}'{_hint(name)}")
        if entry is None or entry == "supported":  # an `extends` child that can express it
            continue
        spec = {"unsupported": entry} if isinstance(entry, str) else dict(entry)
        feature = FEATURES.get(name)
        used = feature.used if feature is not None else _used_by_default(name)
        if "when" in spec:
            try:
                condition = compile_condition(spec["when"])
            except (KeyError, ValueError, TypeError) as exc:
                raise SpecCompileError(f"{where}/when", f"cannot compile condition: {exc}") from None
            used = _both(used, condition)
        rules.append(ParamRule(
            name=name, key=feature.key if feature is not None else name, action=spec["unsupported"], used=used,
            report_only=bool(spec.get("report_only", False)), message=spec.get("message"),
        ))
    return ParamRules(rules) if rules else NO_RULES


def _both(used: Callable[[Mapping[str, Any]], bool], condition: Any) -> Callable[[Mapping[str, Any]], bool]:
    return lambda body: used(body) and bool(condition(body, {}))
