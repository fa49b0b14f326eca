"""CEL rules (routing `when`, `retry`, `fallback`), compiled once, behind one small facade.

Two backends: the Rust-based `cel` package (common-expression-language; ~10 µs per evaluation
here) when installed, and cel-python (`celpy`, the reference; ~400 µs) always. Both see the same
activation: projected scalar facts and short string lists, every declared variable always bound.
An evaluation error is returned as `RuleError`; callers treat it as no-match / do-not-retry.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

__all__ = ["BACKENDS", "Rule", "RuleCompileError", "RuleError", "compile_rule", "sample_activation"]

log = logging.getLogger("gaud.rules")


class RuleCompileError(ValueError):
    """A CEL expression that does not parse or refers to an unknown variable."""


class RuleError(Exception):
    """A CEL expression failed at run time (type mismatch, missing field)."""


#: The variables every rule may use, with the type of each leaf (for the sample activation).
ACTIVATION_SHAPE: dict[str, Any] = {
    "request": {
        "model": "gpt-4o",
        "n_messages": 2,
        "n_tools": 0,
        "estimated_tokens": 120,
        "stream": False,
        "user": "",
        "tags": ["batch"],
    },
    "attempt": 1,
    "deployment": {"provider": "openai", "model": "gpt-4o", "name": "openai/gpt-4o"},
    "response": {"status": 0},
    "error": {"kind": "rate_limit", "status": 429, "retry_after": 0.0},
}


def sample_activation() -> dict[str, Any]:
    """An activation with every variable bound, used to smoke-test rules at load time."""
    import copy

    return copy.deepcopy(ACTIVATION_SHAPE)


class _Program(Protocol):
    def __call__(self, activation: Mapping[str, Any]) -> Any: ...


@functools.cache
def _cel_core() -> ModuleType | None:
    """The compiled core of the `cel` package, or None when it is not installed.

    The package's `__init__` also imports its command-line tool (prompt_toolkit, rich, typer:
    ~22 MB resident in every worker, measured); only `compile` is used here, so the extension
    module is loaded on its own when it can be found, else the package is imported whole.
    """
    if "cel" in sys.modules:
        return sys.modules["cel"]
    package = importlib.util.find_spec("cel")
    if package is None:
        return None
    for folder in package.submodule_search_locations or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"cel{suffix}"
            if not path.is_file():
                continue
            spec = importlib.util.spec_from_file_location("cel.cel", path)
            if spec is None or spec.loader is None:
                break
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["cel.cel"] = module  # once per process: a later `import cel` reuses it
            return module
    import cel

    return cel


def _compile_fast(expression: str) -> _Program:
    cel = _cel_core()
    if cel is None:  # BACKENDS holds this compiler only when the core was found
        raise RuleCompileError("the fast CEL backend needs the `cel` package (common-expression-language)")
    try:
        program = cel.compile(expression)
    except (ValueError, RuntimeError) as exc:
        raise RuleCompileError(str(exc).replace("\n", " ")) from None

    def run(activation: Mapping[str, Any]) -> Any:
        try:
            return program.execute(dict(activation))
        except (RuntimeError, ValueError, TypeError, LookupError, ArithmeticError) as exc:
            raise RuleError(str(exc)) from None

    return run


def _compile_reference(expression: str) -> _Program:
    import celpy
    from celpy.adapter import json_to_cel
    from celpy.celparser import CELParseError
    from celpy.evaluation import CELEvalError

    env = celpy.Environment()
    try:
        program = env.program(env.compile(expression))
    except CELParseError as exc:
        raise RuleCompileError(" ".join(str(exc).split())) from None

    def run(activation: Mapping[str, Any]) -> Any:
        try:
            result = program.evaluate({name: json_to_cel(value) for name, value in activation.items()})
        except CELEvalError as exc:
            raise RuleError(str(exc)) from None
        if isinstance(result, CELEvalError):
            raise RuleError(str(result))
        return _from_cel(result)

    return run


def _from_cel(value: Any) -> Any:
    import celpy.celtypes as t

    if isinstance(value, t.BoolType):
        return bool(value)
    if isinstance(value, (t.IntType, t.UintType)):
        return int(value)
    if isinstance(value, t.DoubleType):
        return float(value)
    if isinstance(value, t.StringType):
        return str(value)
    return value


def _fast_available() -> bool:
    try:
        return _cel_core() is not None
    except ImportError:
        return False


BACKENDS: dict[str, Callable[[str], _Program]] = {"reference": _compile_reference}
if _fast_available():
    BACKENDS["fast"] = _compile_fast
DEFAULT_BACKEND = "fast" if "fast" in BACKENDS else "reference"

#: Compile every rule on every backend at load (what `validate` does). `serve` turns it off:
#: the reference backend then is never imported in a serving process (~7 MB).
CHECK_PORTABILITY = True


class Rule:
    """One compiled CEL expression that must yield a bool."""

    def __init__(self, expression: str, backend: str = DEFAULT_BACKEND) -> None:
        self.expression = expression
        self.backend = backend
        self._run = BACKENDS[backend](expression)
        try:
            result = self._run(sample_activation())
        except RuleError as exc:
            raise RuleCompileError(f"fails on a sample request: {exc}") from None
        if not isinstance(result, bool):
            raise RuleCompileError(f"must give true or false, gave {type(result).__name__}")

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        """True/False; a run-time error raises RuleError (callers decide what it means)."""
        result = self._run(activation)
        if not isinstance(result, bool):
            raise RuleError(f"gave {result!r}, not true or false")
        return result

    def matches(self, activation: Mapping[str, Any], *, on_error: bool = False) -> bool:
        try:
            return self.evaluate(activation)
        except RuleError as exc:
            log.warning("rule %r failed: %s", self.expression, exc)
            return on_error

    def __repr__(self) -> str:
        return f"Rule({self.expression!r})"


def compile_rule(expression: str, backend: str = DEFAULT_BACKEND) -> Rule:
    """Compile a CEL expression; raises RuleCompileError with the parser's message.

    Example: `compile_rule('error.kind == "rate_limit" && attempt <= 3')`.
    """
    return Rule(expression, backend)
