"""The spec-language manual (docs/spec-language.md), generated from the JSON Schemas.

Every field, definition and operation is documented from the schemas' own `description` and
`examples`, so the manual cannot drift from what `gaud-engine validate` enforces;
`gaud-engine spec manual --check` (and the test suite) fail when the committed copy is stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..spec.loader import schema_dir

__all__ = ["SCHEMAS", "generate_manual"]

#: (schema file stem, section anchor, what it governs), in the manual's order.
SCHEMAS = (
    ("provider", "provider", "providers.d/*.yaml"),
    ("pricing", "pricing", "pricing.d/*.yaml"),
    ("models", "models", "models.d/*.yaml"),
    ("routes", "routes", "routes.yaml"),
    ("ingress", "ingress", "ingress.d/*.yaml"),
)
_BRANCHES = ("then", "else")
_COMBINERS = ("allOf", "anyOf", "oneOf")


@dataclass
class _Field:
    path: str
    node: dict[str, Any]
    required: bool


# -- reading the schema ----------------------------------------------------------------------------
def _own_properties(node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Properties of an object schema, including those declared in its branches (`then`/`else`,
    `allOf`/`anyOf`/`oneOf` members), not following `$ref`. The `if` tests are not fields."""
    seen: set[str] = set()
    required = set(node.get("required") or [])

    def visit(sub: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
        for key, value in (sub.get("properties") or {}).items():
            if key not in seen and isinstance(value, dict):
                seen.add(key)
                yield key, value, key in required or key in set(sub.get("required") or [])
        for branch in _BRANCHES:
            if isinstance(sub.get(branch), dict) and "$ref" not in sub[branch]:
                yield from visit(sub[branch])
        for combiner in _COMBINERS:
            for member in sub.get(combiner) or []:
                if isinstance(member, dict) and "$ref" not in member:
                    yield from visit(member)

    yield from visit(node)


def _fields(node: dict[str, Any], path: str = "") -> Iterator[_Field]:
    """Every documented field below a schema node, depth first, as dotted paths."""
    for key, value, required in _own_properties(node):
        here = f"{path}.{key}" if path else key
        yield _Field(here, value, required)
        if "$ref" not in value:
            yield from _fields(value, here)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "$ref" not in extra:
        here = f"{path}.<name>" if path else "<name>"
        if "description" in extra:
            yield _Field(here, extra, False)
        yield from _fields(extra, here)
    items = node.get("items")
    if isinstance(items, dict) and "$ref" not in items:
        here = f"{path}[]" if path else "[]"
        if "description" in items:
            yield _Field(here, items, False)
        yield from _fields(items, here)
    for branch in _BRANCHES:  # list-or-object shapes keep their item fields in a branch
        sub = node.get(branch)
        if isinstance(sub, dict) and "$ref" not in sub and isinstance(sub.get("items"), dict) and "$ref" not in sub["items"]:
            yield from _fields({"items": sub["items"]}, path)


# -- writing Markdown ------------------------------------------------------------------------------
def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _flow(value: Any) -> str:
    """A value as one line of YAML."""
    if isinstance(value, str) and (value == "" or "\n" in value or value != value.strip()):
        return json.dumps(value, ensure_ascii=False)
    dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=10**6)
    return dumped.strip().removesuffix("...").strip()


def _examples(node: dict[str, Any]) -> list[str]:
    examples = node.get("examples")
    if not isinstance(examples, list) or not examples:
        return []
    inline = [_flow(e) for e in examples]
    if all(len(i) <= 90 for i in inline):
        label = "Example" if len(inline) == 1 else "Examples"
        return [f"{label}: " + ", ".join(_code(i) for i in inline), ""]
    out = ["Example:" if len(examples) == 1 else "Examples:", ""]
    for example in examples:
        block = yaml.safe_dump(example, default_flow_style=None, allow_unicode=True, sort_keys=False, width=100)
        out += ["```yaml", block.rstrip("\n").removesuffix("...").rstrip("\n"), "```", ""]
    return out


class _Writer:
    """One schema's section; links between definitions use `<prefix>-<def name>` anchors."""

    def __init__(self, schema: dict[str, Any], prefix: str) -> None:
        self.schema = schema
        self.prefix = prefix
        self.defs: dict[str, Any] = schema.get("$defs") or {}

    def anchor(self, name: str) -> str:
        return f"{self.prefix}-{name.replace('_', '-')}"

    def link(self, ref: str) -> str:
        name = ref.rsplit("/", 1)[-1]
        if ref.startswith("#/$defs/") and name in self.defs:
            return f"[{name}](#{self.anchor(name)})"
        return _code(ref)

    def kind(self, node: Any) -> str:
        """What a node accepts, in a few words."""
        if not isinstance(node, dict):
            return "anything" if node is True else "nothing"
        if "$ref" in node:
            return self.link(node["$ref"])
        if "const" in node:
            return _code(_flow(node["const"]))
        if "enum" in node:
            return "one of " + ", ".join(_code(_flow(v)) for v in node["enum"])
        for combiner in ("anyOf", "oneOf"):
            if combiner in node:
                return " or ".join(dict.fromkeys(self.kind(m) for m in node[combiner]))
        types = node.get("type")
        if types is None and "if" in node:
            shapes = []
            for part in (node.get("if"), node.get("then"), node.get("else")):
                if isinstance(part, dict) and ("type" in part or "$ref" in part or "if" in part):
                    shapes.append(self.kind(part))
            then: dict[str, Any] = node["then"] if isinstance(node.get("then"), dict) else {}
            if isinstance(then.get("items"), dict) and shapes and shapes[0] == "a list":
                shapes[0] = "a list of " + self.kind(then["items"])
            if isinstance(then.get("enum"), list) and shapes and shapes[0] == "a string":
                shapes[0] = "one of " + ", ".join(_code(_flow(v)) for v in then["enum"])
            return " or ".join(dict.fromkeys(shapes)) or "anything"
        names = types if isinstance(types, list) else [types] if types else []
        words = []
        for name in names:
            if name == "array":
                items = node.get("items")
                words.append(f"a list of {self.kind(items)}" if isinstance(items, dict) else "a list")
            elif name == "object":
                extra = node.get("additionalProperties")
                if isinstance(extra, dict) and not node.get("properties"):
                    words.append(f"a mapping of names to {self.kind(extra)}")
                else:
                    words.append("a mapping")
            else:
                words.append({"string": "a string", "integer": "an integer", "number": "a number",
                              "boolean": "true or false", "null": "null"}.get(str(name), str(name)))
        return " or ".join(words) or "anything"

    def constraints(self, node: dict[str, Any]) -> list[str]:
        notes = []
        if "pattern" in node:
            notes.append(f"matches {_code(node['pattern'])}")
        for key, word in (("minimum", "at least"), ("maximum", "at most"), ("minLength", "at least"),
                          ("minItems", "at least"), ("maxItems", "at most")):
            if key in node:
                unit = " character" if key == "minLength" else " item" if key in ("minItems", "maxItems") else ""
                notes.append(f"{word} {node[key]}{unit}{'s' if unit and node[key] != 1 else ''}")
        if node.get("uniqueItems"):
            notes.append("no repeats")
        return notes

    def entry(self, heading: str, node: dict[str, Any], required: bool = False) -> list[str]:
        kind = self.kind(node)
        notes = self.constraints(node)
        line = f"*{kind}*" if not kind.startswith(("[", "`")) else kind
        if required:
            line += " · **required**"
        if notes:
            line += " · " + ", ".join(notes)
        out = [heading, "", line, ""]
        if node.get("description"):
            out += [node["description"], ""]
        return out + _examples(node)

    def fields(self, node: dict[str, Any], level: str) -> list[str]:
        out = []
        for f in _fields(node):
            out += self.entry(f"{level} {_code(f.path)}", f.node, f.required)
        return out

    def operations(self) -> list[str]:
        """The `op_<name>` definitions, with the rule parameters marked as theirs."""
        ops = [name for name in self.defs if name.startswith("op_")]
        if not ops:
            return []
        rule = self.defs.get("rule") or {}
        params = rule.get("properties") or {}
        order = ((params.get("op") or {}).get("enum")) or [name[3:] for name in ops]
        out = ["### Operations", "",
               (f"The `op` of a [rule](#{self.anchor('rule')}), applied to the value the rule picked; "
                "an operation's parameters sit beside `op` in the rule."), ""]
        for op in order:
            node = self.defs.get(f"op_{op}")
            if node is None:
                continue
            out += [f'<a id="{self.anchor("op_" + op)}"></a>', "", f"#### op: {_code(op)}", ""]
            if node.get("description"):
                out += [node["description"], ""]
            marked = [name for name, value in params.items()
                      if isinstance(value, dict) and re.search(rf"(\(`{re.escape(op)}`\)|^{re.escape(op)}:)", value.get("description", ""))]
            own = [key for key, _, _ in _own_properties(node)]
            names = list(dict.fromkeys([*marked, *own]))
            if names:
                out += ["Parameters: " + ", ".join(_code(n) for n in names), ""]
            out += _examples(node)
            out += self.fields(node, "#####")
        return out

    def section(self, title: str, files: str) -> list[str]:
        schema = self.schema
        out = [f'<a id="{self.prefix}"></a>', "", f"## {title}", "",
               f"Files: {_code(files)}. Schema: {_code(f'schemas/{self.prefix}.schema.json')}.", ""]
        if schema.get("description"):
            out += [schema["description"], ""]
        out += _examples(schema)
        out += [f"### Fields of {_code(files)}", ""]
        out += self.fields(schema, "####")
        plain = [name for name in self.defs if not name.startswith("op_")]
        if plain:
            out += ["### Definitions", "", "Shapes that several fields share, linked from where they are used.", ""]
            for name in plain:
                node = self.defs[name]
                out += [f'<a id="{self.anchor(name)}"></a>', ""]
                out += self.entry(f"#### {_code(name)}", node)
                out += self.fields(node, "#####")
        out += self.operations()
        return out


def generate_manual(schemas: Path | None = None) -> str:
    """The manual's Markdown text, from schemas/*.schema.json."""
    folder = schemas or schema_dir()
    out = [
        "<!-- Generated by `gaud-engine spec manual` from schemas/*.schema.json: edit the schemas, not this file. -->",
        "",
        "# The spec language",
        "",
        "A spec tree is made of YAML files: provider specs (`providers.d/*.yaml`), prices",
        "(`pricing.d/*.yaml`), routes (`routes.yaml`) and any others listed below. This manual lists every",
        "field, definition and operation of each, with the descriptions and examples of the JSON Schemas",
        "that `gaud-engine validate` checks them against. Fields are written as dotted paths: `<name>`",
        "stands for a key you choose, `[]` for the items of a list. How a spec is proven is in",
        "[recordings.md](recordings.md); a walk-through is in [adding-a-provider.md](adding-a-provider.md).",
        "",
        "## Contents",
        "",
    ]
    known = {stem: (prefix, files) for stem, prefix, files in SCHEMAS}
    others = sorted(p.name.removesuffix(".schema.json") for p in folder.glob("*.schema.json"))
    writers = []
    for stem in [*known, *[o for o in others if o not in known]]:
        path = folder / f"{stem}.schema.json"
        if not path.is_file():
            continue
        schema = json.loads(path.read_text(encoding="utf-8"))
        title = schema.get("title") or stem
        named = re.search(r"\(([^()]+)\)\s*$", title)
        prefix, files = known.get(stem, (stem, named.group(1) if named else f"{stem} files"))
        writers.append((_Writer(schema, prefix), title, files))
        out.append(f"- [{title}](#{prefix})")
    out.append("")
    for writer, title, files in writers:
        out += writer.section(title, files)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
