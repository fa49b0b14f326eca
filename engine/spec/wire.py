"""Same-format pass-through (docs/ingress.md, "Same-format pass-through").

When a client's format (an ingress spec) and a deployment's wire format (a provider spec's
`wire_format`) are the same, the client's own request goes upstream with only the provider's
declared rewrites, and the upstream's reply (or stream) goes back as it came. Three declarations:

- `WireFormat` (provider spec `wire_format`): the format's name and the rewrites (`set` keys from
  templates such as `@model`, then `remove` keys), e.g. the model id, or the model moved to the URL;
- `Passthrough` (ingress spec `passthrough`): the formats it may pass through to, the client
  headers forwarded (`forward_headers`), and `native_only` rules: what the canonical shape cannot
  carry. Those parts are left out of the canonical request (routing, estimates, the translated
  path) and make a candidate of another format skip;
- `NativeRequest`: one client request as it may go upstream unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..mapping import compile_condition, compile_template

__all__ = ["NativeRequest", "Passthrough", "WireFormat", "compile_passthrough", "compile_wire_format"]

Predicate = Any  # mapping.templates.Predicate: (src, ctx) -> bool
_GONE = object()  # a part left out without a stand-in


@dataclass(frozen=True)
class WireFormat:
    """A provider's wire format: its name, and what changes in a client's body of that format."""

    name: str
    set: tuple[tuple[str, Any], ...]  # (key, compiled template over `@model`)
    remove: tuple[str, ...]

    def rewrite(self, body: Mapping[str, Any], model: str) -> dict[str, Any]:
        out = dict(body)
        ctx = {"model": model}
        for key, template in self.set:
            out[key] = template(body, ctx)
        for key in self.remove:
            out.pop(key, None)
        return out


def compile_wire_format(data: Mapping[str, Any] | None) -> WireFormat | None:
    if not data:
        return None
    sets = tuple((k, compile_template(v)) for k, v in (data.get("set") or {}).items() if v is not None)
    return WireFormat(str(data["name"]), sets, tuple(data.get("remove") or ()))


@dataclass(frozen=True)
class Lost:
    """A native-only part of a request: the parameter, and what it is (a block's or tool's type)."""

    param: str
    what: str

    def __str__(self) -> str:
        return f"`{self.param}` ({self.what})" if self.what else f"`{self.param}`"


@dataclass(frozen=True)
class _Rule:
    param: str
    path: tuple[str, ...]  # pointer segments; `*` is every item of a list
    when: Predicate | None
    what: str
    replace: Any = None  # compiled template: what stands in for a matched part (`as`); None drops it

    def strip(self, node: Any, lost: list[Lost]) -> Any:
        """`node` without what this rule matches (a copy where something goes; never mutated)."""
        return self._strip(node, self.path, lost)

    def _strip(self, node: Any, path: tuple[str, ...], lost: list[Lost]) -> Any:
        head, rest = path[0], path[1:]
        if head == "*":
            if not isinstance(node, list):
                return node
            if not rest:
                kept = [self._instead(item) if self._matches(item, lost) else item for item in node]
                kept = [item for item in kept if item is not _GONE]
                return kept if len(kept) != len(node) or any(a is not b for a, b in zip(kept, node, strict=True)) else node
            items = [self._strip(item, rest, lost) for item in node]
            return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
        if not isinstance(node, dict) or head not in node:
            return node
        if not rest:
            if not self._matches(node[head], lost):
                return node
            instead = self._instead(node[head])
            return {k: v for k, v in node.items() if k != head} if instead is _GONE else {**node, head: instead}
        child = self._strip(node[head], rest, lost)
        return node if child is node[head] else {**node, head: child}

    def _instead(self, value: Any) -> Any:
        return _GONE if self.replace is None else self.replace(value, {})

    def _matches(self, value: Any, lost: list[Lost]) -> bool:
        if self.when is not None and not self.when(value, {}):
            return False
        kind = value.get("type") if isinstance(value, dict) else None
        lost.append(Lost(self.param, f"type {kind}" if isinstance(kind, str) and not self.what else self.what))
        return True


@dataclass(frozen=True)
class NativeRequest:
    """A client's request as it may go to a deployment of one of `formats` unchanged; `lost`: what
    a translation to another format would leave out (empty: translating loses nothing)."""

    formats: frozenset[str]
    body: dict[str, Any]
    lost: tuple[Lost, ...]
    headers: tuple[tuple[str, str], ...]

    def served_by(self, wire: WireFormat | None) -> bool:
        return wire is not None and wire.name in self.formats


@dataclass(frozen=True)
class Passthrough:
    """An ingress spec's `passthrough` section."""

    formats: frozenset[str]
    rules: tuple[_Rule, ...]
    forward_headers: tuple[str, ...]

    def reduce(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[Lost]]:
        """The request without its native-only parts (what the canonical mapping is given), and
        those parts. The body itself is not changed."""
        lost: list[Lost] = []
        for rule in self.rules:
            body = rule.strip(body, lost)
        return body, lost

    def native(self, body: dict[str, Any], headers: Mapping[str, str]) -> NativeRequest:
        _, lost = self.reduce(body)
        forwarded = tuple((h, headers[h]) for h in self.forward_headers if h in headers)
        return NativeRequest(self.formats, body, tuple(dict.fromkeys(lost)), forwarded)


def compile_passthrough(data: Mapping[str, Any] | None) -> Passthrough | None:
    if not data:
        return None
    rules = tuple(
        _Rule(
            param=str(rule["param"]),
            path=tuple(seg.replace("~1", "/").replace("~0", "~") for seg in str(rule["at"]).split("/")[1:]),
            when=compile_condition(rule["when"]) if "when" in rule else None,
            what=str(rule.get("what", "")),
            replace=compile_template(rule["as"]) if "as" in rule else None,
        )
        for rule in data.get("native_only") or ()
    )
    return Passthrough(
        frozenset(data["formats"]), rules, tuple(h.lower() for h in data.get("forward_headers") or ()),
    )
