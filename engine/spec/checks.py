"""What a provider spec can get wrong that the schema cannot see: names that only mean something
to the engine. Each would otherwise fail silently or at run time:

- a source `@name` the engine never binds reads nothing (`@fromat`);
- a classifier `kind` that no reader knows drops the part (tool calls vanish, finish `stop`);
- a `parts:` key that is not a content kind makes every message of the real kind a 400.

Run on the merged (extends-resolved) spec; the first problem is a SpecCompileError at its pointer.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from ..mapping.names import CONTEXT_NAMES, MESSAGE_PART_KINDS, REPLY_PART_KINDS
from .common import SpecCompileError

__all__ = ["check_names"]

#: Sections whose strings may be sources (`api` holds Jinja2 templates, `models` data).
_MAPPED = ("request", "response", "stream", "errors", "embeddings", "models_list")
#: Keys whose values are literals, never sources.
_LITERAL = frozenset({"const", "description", "examples", "pattern", "table", "done_data", "finish_reasons"})
#: Conditions whose second item is a literal to compare with.
_COMPARISONS = frozenset({"eq", "ne", "in", "not_in"})
_IGNORE = "_ignore"


def _esc(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _hint(word: str, options: Iterable[str], prefix: str = "") -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return "; known: " + ", ".join(f"{prefix}{o}" for o in options)


def _kinds_of(classifier: Any, at: str) -> Iterator[tuple[str, Any]]:
    """(pointer, kind) for every kind a classifier gives."""
    if isinstance(classifier, dict):
        for case, kind in (classifier.get("cases") or {}).items():
            yield f"{at}/cases/{_esc(case)}", kind
    elif isinstance(classifier, list):
        for i, entry in enumerate(classifier):
            if isinstance(entry, dict):
                yield f"{at}/{i}/kind", entry.get("kind")


def _classifier_problem(node: dict[str, Any], at: str) -> tuple[str, str] | None:
    """A kind the classifier's reader does not know: `parts_to_message` reads its closed set (and
    the kinds `id.carry_preceding` names), a stream `each` its `cases`."""
    if node.get("op") == "parts_to_message":
        carrying = ((node.get("id") or {}).get("carry_preceding") or {}).values()
        carried = [str(c["kind"]) for c in carrying if isinstance(c, dict) and "kind" in c]
        known = [*REPLY_PART_KINDS, *(k for k in carried if k not in REPLY_PART_KINDS)]
        reader = "parts_to_message reads"
    elif "in" in node and isinstance(node.get("cases"), dict):
        known = [str(k) for k in node["cases"] if k != "_default"]
        reader = "this `each` has cases for"
    else:
        return None
    for pointer, kind in _kinds_of(node.get("classify"), f"{at}/classify"):
        if isinstance(kind, str) and kind != _IGNORE and kind not in known:
            return pointer, f"unknown part kind '{kind}' ({reader}: {', '.join(known)}, or {_IGNORE}){_hint(kind, known)}"
    return None


def _parts_problem(node: dict[str, Any], at: str) -> tuple[str, str] | None:
    parts = node.get("parts")
    if node.get("op") != "messages_to_turns" or not isinstance(parts, dict):
        return None
    for key in parts:
        if key not in MESSAGE_PART_KINDS:
            return f"{at}/parts/{_esc(key)}", (
                f"unknown content kind '{key}'{_hint(str(key), MESSAGE_PART_KINDS)} "
                f"(kinds: {', '.join(MESSAGE_PART_KINDS)})"
            )
    return None


def _walk(node: Any, at: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        if node.startswith("@"):
            name = node[1:].partition("/")[0]
            if name not in CONTEXT_NAMES:
                yield at, f"unknown context value '@{name}'{_hint(name, sorted(CONTEXT_NAMES), '@')}"
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{at}/{i}")
    elif isinstance(node, dict):
        for check in (_classifier_problem, _parts_problem):
            found = check(node, at)
            if found is not None:
                yield found
        for key, value in node.items():
            if key in _LITERAL or (key == "classify" and isinstance(value, dict)):
                continue
            compared = key in _COMPARISONS and isinstance(value, list)  # only its first item is a source
            yield from _walk(value[:1] if compared else value, f"{at}/{_esc(key)}")


def problems(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(pointer, message) for every name in `spec` the engine does not know."""
    for section in _MAPPED:
        if section in spec:
            yield from _walk(spec[section], f"/{section}")


def check_names(spec: dict[str, Any]) -> None:
    """Raise a SpecCompileError for the first unknown name in `spec`."""
    for pointer, message in problems(spec):
        raise SpecCompileError(pointer, message)
