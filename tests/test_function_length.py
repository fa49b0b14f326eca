"""No function or method in engine/ is over 80 lines (issue 17): one job each, readable in one screen.

Lines are counted from the `def` line to the function's last line (decorators not included), and a
nested function counts on its own as well as inside its parent. Generated code is not in the source
tree (engine/mapping/codegen.py writes rule runners at load), so nothing is excluded for it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
MAX_LINES = 80

#: Functions allowed over MAX_LINES for now, by "path::qualified.name" (paths from the repository root).
KNOWN_LONG: dict[str, str] = {}


def long_functions(source: str, path: str, limit: int = MAX_LINES) -> Iterator[tuple[str, int, int]]:
    """(`path::qualified.name`, line, length) of every function in `source` longer than `limit` lines."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > limit:
                    yield f"{path}::{name}", child.lineno, length
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), "")


def engine_long_functions() -> list[tuple[str, int, int]]:
    found = []
    for file in sorted(ENGINE.rglob("*.py")):
        found += long_functions(file.read_text(encoding="utf-8"), file.relative_to(ROOT).as_posix())
    return found


def test_no_function_in_engine_is_over_80_lines() -> None:
    too_long = [
        f"{name.split('::')[0]}:{line} {name.split('::')[1]} is {length} lines"
        for name, line, length in engine_long_functions()
        if name not in KNOWN_LONG
    ]
    assert not too_long, f"functions over {MAX_LINES} lines (split them into functions with one job each):\n" + "\n".join(
        too_long
    )


def test_every_known_exception_is_still_over_80_lines() -> None:
    """An entry stays only while its function is still too long: once it is split, delete the entry."""
    still_long = {name for name, _, _ in engine_long_functions()}
    stale = sorted(set(KNOWN_LONG) - still_long)
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from KNOWN_LONG: {stale}"


def test_lengths_are_counted_per_function_nested_ones_included() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(78))
    source = (
        f"def fits():\n{body}\n    return 0\n\n"  # 80 lines
        f"class Box:\n    def method(self):\n{body.replace('    ', '        ')}\n        y = 1\n        return 0\n\n"
        f"async def outer():\n    def inner():\n{body.replace('    ', '        ')}\n        y = 1\n        return 0\n"
        "    return inner\n"
    )
    found = {name: (line, length) for name, line, length in long_functions(source, "m.py")}
    assert found == {
        "m.py::Box.method": (83, 81),
        "m.py::outer": (165, 83),
        "m.py::outer.inner": (166, 81),
    }
