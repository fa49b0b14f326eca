"""Where the parts of a rule find the rule compiler again: the one recursion of the spec language.

A rule is made of templates and an op, and both may hold rules again: `each` maps every item with a
nested rule list (`map:`), and a template may hold an inline rule (`{op: json_decode, from: @text}`).
`rules.py` is built on `templates.py` and `ops.py`; so that neither has to import it back, it
registers its compilers here when it is imported, which importing `engine.mapping` (or any module
in it) does first. Nested rules are compiled at load, so nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Getter", "Mapper", "compile_inline_rule", "compile_nested_rules", "register"]

#: A compiled value source or template: fn(src, ctx) -> value | MISSING.
Getter = Callable[[Any, dict[str, Any]], Any]
#: A compiled rule list: fn(src, ctx) -> the new document.
Mapper = Callable[[Any, dict[str, Any]], dict[str, Any]]



class _Compilers:
    """The installed compilers (None until rules.py registers them)."""

    value: Callable[[dict[str, Any]], Getter] | None = None
    rule_list: Callable[[list[dict[str, Any]]], Mapper] | None = None


_installed = _Compilers()


def register(
    rule_value_compiler: Callable[[dict[str, Any]], Getter],
    rule_list_compiler: Callable[[list[dict[str, Any]]], Mapper],
) -> None:
    """Install the compilers of one rule's value and of a rule list (rules.py does, at import)."""
    _installed.value = rule_value_compiler
    _installed.rule_list = rule_list_compiler


def compile_inline_rule(rule: dict[str, Any]) -> Getter:
    """A rule written inside a template, compiled as the value of a rule (it has no `to`)."""
    if _installed.value is None:
        raise RuntimeError("engine.mapping.rules is not imported: import engine.mapping first")
    return _installed.value(rule)


def compile_nested_rules(rules: list[dict[str, Any]]) -> Mapper:
    """A rule list inside an op (`each` with `map:`), compiled as any rule list is."""
    if _installed.rule_list is None:
        raise RuntimeError("engine.mapping.rules is not imported: import engine.mapping first")
    return _installed.rule_list(rules)
