"""YAML files with line numbers for error messages.

Parsing uses the C loader (about 10x faster); only when a problem must be reported is the text
composed again with the pure-Python loader, to find the line of a JSON pointer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError
from .pointer import compile_pointer

__all__ = ["YamlFile", "read_yaml"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlFile:
    """A parsed YAML file that can tell the line of any JSON pointer into it."""

    def __init__(self, path: Path, text: str, data: Any, label: str | None = None) -> None:
        self.path = path
        self.label = label or str(path)
        self.text = text
        self.data = data
        self._root: yaml.Node | None = None

    def line_of(self, pointer: str) -> int:
        """1-based line of the node at pointer (or of its nearest existing parent)."""
        if self._root is None:
            self._root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        node = self._root
        if node is None:
            return 1
        try:
            tokens = compile_pointer(pointer)
        except ValueError:
            return node.start_mark.line + 1
        for token in tokens:
            child = _child(node, token)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    def problem(self, pointer: str, message: str) -> SpecError:
        return SpecError(self.label, self.line_of(pointer), pointer, message)


def _child(node: yaml.Node, token: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(token):
                # A null value has no useful line of its own: point at the key.
                return key if isinstance(value, yaml.ScalarNode) and value.value in ("", "~", "null") else value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(token, int) and token < len(node.value):
        return node.value[token]
    return None


def read_yaml(path: Path, label: str | None = None) -> tuple[YamlFile | None, SpecError | None]:
    """Parse a YAML file; a syntax error becomes a SpecError with the parser's line."""
    name = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, SpecError(name, 1, "", f"cannot read file: {exc}")
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, SpecError(name, line, "", f"YAML syntax error: {exc.problem or exc}")
    except yaml.YAMLError as exc:
        return None, SpecError(name, 1, "", f"YAML error: {exc}")
    return YamlFile(path, text, data, name), None
