"""YAML files with line numbers for error messages.

Parsing uses the C loader (about 10x faster); only when a problem must be reported is the text
composed again with the pure-Python loader, to find the line of a JSON pointer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

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
        """1-based line of the node at pointer (or of its nearest existing parent).

        A mapping member is placed at its key's line, so `/models/x` names the `x:` line even
        when its value is a block mapping that starts on the next line.
        """
        if self._root is None:
            self._root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        node = self._root
        if node is None:
            return 1
        line = node.start_mark.line
        if pointer and not pointer.startswith("/"):
            return line + 1
        # Tokens stay strings here (a mapping key "007" is not the list index 7).
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]] if pointer else []
        for token in tokens:
            found = _child(node, token)
            if found is None:
                break
            node, line = found
        return line + 1

    def problem(self, pointer: str, message: str) -> SpecError:
        return SpecError(self.label, self.line_of(pointer), pointer, message)


def _child(node: yaml.Node, token: str) -> tuple[yaml.Node, int] | None:
    """The child node at token and the 0-based line that names it."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(token):
                return value, key.start_mark.line
        return None
    if isinstance(node, yaml.SequenceNode) and token.isdigit() and int(token) < len(node.value):
        item = node.value[int(token)]
        return item, item.start_mark.line
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
        message = f"YAML syntax error: {exc.problem or exc}"
        if exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        elif exc.context:
            message += f" ({exc.context})"
        return None, SpecError(name, line, "", message)
    except yaml.YAMLError as exc:
        return None, SpecError(name, 1, "", f"YAML error: {exc}")
    return YamlFile(path, text, data, name), None
