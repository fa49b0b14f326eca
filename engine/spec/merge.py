"""How a spec that `extends` another is merged into it.

Maps merge recursively and a null value deletes an inherited key. A list is replaced outright,
unless the schema marks it with `x-merge-key` and the child writes `{merge: [...]}` in its place:
then the child's items edit the parent's list by key. Which lists can merge, and by what key, is
read from the schema (`merge_points`), so no list name is written here.

A merge item is one of
- an item: it replaces the parent's item with the same key (the n-th child item naming a key
  replaces the parent's n-th item with it, for keys that repeat);
- `{remove: KEY}`: it deletes that item (counted like a replacement);
- `{add: [items], before: KEY}` / `after: KEY` / neither: new items at that place, or at the end.
An item or removal that matches nothing, or an anchor that names nothing, is a problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MergePoints", "Merger", "merge_points"]

#: Schema path (property names; `*` for any key of a map) -> how the items of that list are keyed:
#: the name of an item field (`to`), or `*` for the item's one key (stream actions).
MergePoints = dict[tuple[str, ...], str]

_BRANCHES = ("then", "else")
_COMBINERS = ("allOf", "anyOf", "oneOf")


def merge_points(schema: Mapping[str, Any]) -> MergePoints:
    """Every place in a spec where the schema lets a list merge by key (`x-merge-key`).

    Only maps are descended (a merge form replaces a list held by a map; items of lists are
    replaced whole), following `$ref` into `$defs` once per chain.
    """
    defs: Mapping[str, Any] = schema.get("$defs") or {}
    points: MergePoints = {}

    def visit(node: Any, path: tuple[str, ...], seen: frozenset[str]) -> None:
        if not isinstance(node, Mapping):
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                visit(defs.get(name), path, seen | {name})
        key = node.get("x-merge-key")
        if isinstance(key, str):
            points[path] = key
        for name, sub in (node.get("properties") or {}).items():
            visit(sub, (*path, name), seen)
        visit(node.get("additionalProperties"), (*path, "*"), seen)
        for branch in _BRANCHES:
            visit(node.get(branch), path, seen)
        for combiner in _COMBINERS:
            for member in node.get(combiner) or []:
                visit(member, path, seen)

    visit(schema, (), frozenset())
    return points


def _pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@dataclass
class _Entry:
    key: Any
    item: Any
    ordinal: int | None  # the n-th parent item with this key; None for an added item


@dataclass
class Merger:
    """Merges a child spec into its resolved parent; problems are (pointer, message) pairs."""

    points: MergePoints
    problems: list[tuple[str, str]] = field(default_factory=list)

    def key_at(self, path: tuple[str, ...]) -> str | None:
        for pattern, key in self.points.items():
            if len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True)):
                return key
        return None

    def merge(self, base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
        """The child value `override` laid over the parent's `base`."""
        key = self.key_at(path) if path else None
        if key is not None and isinstance(override, dict):
            if not isinstance(base, list):
                self._stray(path)
                return base
            return self._merge_list(base, override.get("merge") or [], key, path)
        if not isinstance(base, dict) or not isinstance(override, dict):
            return override
        merged = dict(base)
        for name, value in override.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = self.merge(merged[name], value, (*path, str(name)))
            else:
                self.check_strays(value, (*path, str(name)))
                merged[name] = value
        return merged

    def check_strays(self, data: Any, path: tuple[str, ...] = ()) -> None:
        """Report merge forms with no parent list to merge into (a spec without `extends`, or a
        list the parent does not have)."""
        if not isinstance(data, dict):
            return
        if path and self.key_at(path) is not None:
            self._stray(path)
            return
        for name, value in data.items():
            self.check_strays(value, (*path, str(name)))

    def _stray(self, path: tuple[str, ...]) -> None:
        self.problems.append((
            _pointer(path),
            "`merge` edits an inherited list, but there is none here to edit; write the list itself",
        ))

    def _merge_list(self, base: list[Any], edits: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
        counts: dict[Any, int] = {}
        entries = []
        for item in base:
            k = _item_key(item, key)
            counts[k] = counts.get(k, 0) + 1
            entries.append(_Entry(k, item, counts[k]))
        used: dict[Any, int] = {}
        for index, edit in enumerate(edits):
            where = (*path, "merge", str(index))
            if isinstance(edit, dict) and "add" in edit:
                self._add(entries, edit, key, where)
                continue
            removing = isinstance(edit, dict) and "remove" in edit
            if removing and len(edit) > 1:
                self.problems.append((_pointer(where), "`remove` deletes an item; `add`, `before` and `after` go in an edit of their own"))
                continue
            k = edit["remove"] if removing else _item_key(edit, key)
            if k is None:
                self.problems.append((_pointer(where), f"an item here needs its key ({_key_name(key)})"))
                continue
            used[k] = used.get(k, 0) + 1
            at = next((i for i, e in enumerate(entries) if e.key == k and e.ordinal == used[k]), None)
            if at is None:
                self._no_match(where, k, key, used[k], counts, "remove" if removing else "replace")
            elif removing:
                del entries[at]
            else:
                entries[at].item = edit
        return [e.item for e in entries]

    def _add(self, entries: list[_Entry], edit: dict[str, Any], key: str, where: tuple[str, ...]) -> None:
        new = [_Entry(_item_key(item, key), item, None) for item in edit.get("add") or []]
        if "before" in edit and "after" in edit:
            self.problems.append((_pointer(where), "give `before` or `after`, not both"))
            return
        for side in ("before", "after"):
            if side in edit:
                anchor = edit[side]
                at = next((i for i, e in enumerate(entries) if e.key == anchor), None)
                if at is None:
                    hint = _hint(anchor, [e.key for e in entries])
                    self.problems.append((_pointer((*where, side)), f"{side} {_describe(anchor, key)}: no such item in the list{hint}"))
                    return
                position = at if side == "before" else at + 1
                entries[position:position] = new
                return
        entries.extend(new)

    def _no_match(self, where: tuple[str, ...], k: Any, key: str, nth: int, counts: dict[Any, int], verb: str) -> None:
        pointer = _pointer((*where, "remove") if verb == "remove" else where)
        have = counts.get(k, 0)
        if have:
            message = f"cannot {verb} item {nth} with {_describe(k, key)}: the parent's list has {have}"
        else:
            hint = _hint(k, list(counts))
            new = " (new items go in `{add: [...]}`)" if verb == "replace" else ""
            message = f"cannot {verb} {_describe(k, key)}: no item of the parent's list has it{new}{hint}"
        self.problems.append((pointer, message))


def _item_key(item: Any, key: str) -> Any:
    """An item's merge key: the field named `key`, or (`*`) its one key or the string itself."""
    if key == "*":
        if isinstance(item, str):
            return item
        return next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None
    return item.get(key) if isinstance(item, dict) else None


def _key_name(key: str) -> str:
    return "the action's name" if key == "*" else f"`{key}`"


def _describe(k: Any, key: str) -> str:
    return f"action '{k}'" if key == "*" else f"{key} {k!r}"


def _hint(k: Any, keys: list[Any]) -> str:
    options = [str(o) for o in keys if o is not None]
    close = difflib.get_close_matches(str(k), options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
