"""RFC 6901 JSON pointers, compiled once into token tuples."""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING", "compile_pointer", "get", "put"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def compile_pointer(pointer: str) -> tuple[str | int, ...]:
    """'/a/0/b~1c' -> ('a', 0, 'b/c'); '' -> () (the whole document)."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {pointer!r}")
    tokens: list[str | int] = []
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        tokens.append(int(token) if token.isdigit() else token)
    return tuple(tokens)


def get(doc: Any, tokens: tuple[str | int, ...]) -> Any:
    """The value at tokens, or MISSING. A JSON null counts as missing."""
    for token in tokens:
        if isinstance(doc, dict):
            doc = doc.get(token if isinstance(token, str) else str(token), MISSING)
        elif isinstance(doc, list) and isinstance(token, int):
            doc = doc[token] if token < len(doc) else MISSING
        else:
            return MISSING
        if doc is MISSING or doc is None:
            return MISSING
    return doc


def put(doc: dict[str, Any], tokens: tuple[str | int, ...], value: Any) -> None:
    """Set value at tokens, creating objects and lists on the way."""
    target: Any = doc
    for i, token in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if isinstance(target, list):
            assert isinstance(token, int)
            while len(target) <= token:
                target.append({} if not isinstance(nxt, int) else [])
            target = target[token]
            continue
        key = token if isinstance(token, str) else str(token)
        child = target.get(key)
        if not isinstance(child, (dict, list)):
            child = [] if isinstance(nxt, int) else {}
            target[key] = child
        target = child
    last = tokens[-1]
    if isinstance(target, list):
        assert isinstance(last, int)
        while len(target) <= last:
            target.append(None)
        target[last] = value
    else:
        target[last if isinstance(last, str) else str(last)] = value
