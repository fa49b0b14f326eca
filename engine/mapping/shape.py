"""Shape checks: what a reply must hold before it is mapped (`response.required`).

A mapping reads what is there and skips what is not, so a reply of the wrong shape maps to an
empty answer rather than failing. A spec lists the paths a well-formed reply has, each optionally
with a JSON type; the compiled check names the first that is absent or of the wrong type, or
returns None. One item with several paths is met by any of them (a reply that is either a
candidate or a refusal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..pointer import MISSING, compile_pointer, get

__all__ = ["JSON_TYPES", "ShapeCheck", "compile_required"]

#: JSON type name -> the Python types orjson decodes it to (a bool is not a number).
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "boolean": (bool,),
}

#: fn(reply) -> None when the reply has every required path, else what is wrong with it.
ShapeCheck = Callable[[Any], "str | None"]


def compile_required(items: list[Any]) -> ShapeCheck:
    """Compile `response.required`: pointer strings, or `{path: pointer | [pointers], type}`."""
    checks = [_compile_item(item) for item in items]

    def check(reply: Any) -> str | None:
        for one in checks:
            problem = one(reply)
            if problem is not None:
                return problem
        return None

    return check


def _compile_item(item: Any) -> ShapeCheck:
    spec = {"path": item} if isinstance(item, str) else item
    paths = spec["path"] if isinstance(spec["path"], list) else [spec["path"]]
    tokens = [compile_pointer(path) for path in paths]
    type_name: str | None = spec.get("type")
    if type_name is not None and type_name not in JSON_TYPES:
        raise ValueError(f"unknown JSON type {type_name!r}: one of {', '.join(JSON_TYPES)}")
    types = JSON_TYPES[type_name] if type_name is not None else None
    where = " or ".join(paths)

    def check(reply: Any) -> str | None:
        for pointer in tokens:
            value = get(reply, pointer)
            if value is MISSING:
                continue
            if types is None or (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
                return None
            return f"{where} is not {'an' if type_name in ('object', 'array') else 'a'} {type_name}"
        return f"{where} is missing"

    return check
