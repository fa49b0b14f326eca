"""The shape of engine/: no import cycles between its modules, and every layer folder says what it is for.

The import graph is read from the source with `ast`, not by importing: every `import` and
`from ... import` counts, at module level, inside functions and under `if TYPE_CHECKING:`, since
each is a dependency someone has to understand. Importing `a.b.c` also runs the `__init__` of `a`
and `a.b`; those implied edges are left out (else every module importing `engine.errors` would
depend on everything `engine/__init__.py` imports), but an import that names a package, such as
`from ..mapping import compile_rules`, is an edge to that package's `__init__`.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"

@dataclass(frozen=True)
class ImportSite:
    """Where one module imports another: for the message that names a cycle."""

    file: str  # relative to the folder that holds the package
    line: int
    text: str
    where: str  # "module level", "function-local" or "TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}  ({self.where})"


Graph = dict[str, dict[str, ImportSite]]


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package under `root` (itself a package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module, with where it sits."""
    top = {id(node) for node in tree.body}
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(inner) for inner in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            where = "TYPE_CHECKING" if id(node) in type_checking else "module level" if id(node) in top else "function-local"
            yield node, where


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules of ours an import statement in `module` names."""
    if isinstance(node, ast.Import):
        return [_nearest(alias.name, modules) for alias in node.names if _nearest(alias.name, modules)]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        name = submodule if submodule in modules else _nearest(target, modules)
        if name:
            found.append(name)
    return found


def _nearest(name: str, modules: dict[str, Path]) -> str:
    """`name` or its nearest enclosing module of ours; "" for other packages."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return ""


def import_graph(root: Path) -> Graph:
    """module -> {imported module -> the first place it is imported}, for the package at `root`."""
    modules = module_files(root)
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, ImportSite] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        file = str(path.relative_to(root.parent))
        for node, where in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", modules):
                if target != module and target not in edges:
                    edges[target] = ImportSite(file, node.lineno, ast.unparse(node), where)
        graph[module] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def describe_cycle(graph: Graph, component: list[str]) -> str:
    """One shortest loop through a component, with the import that makes each step."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    queue = deque([start])
    while start not in previous:  # a component of two or more always leads back to its start
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target in members and target not in previous:
                previous[target] = module
                queue.append(target)
    loop = [start]
    while len(loop) == 1 or loop[-1] != start:
        loop.append(previous[loop[-1]])
    loop.reverse()
    head = " -> ".join(loop)
    if len(loop) - 1 < len(component):
        head += f"  (the cycle also takes in {', '.join(sorted(members - set(loop)))})"
    return "\n".join([head, *(f"    {graph[a][b]}" for a, b in itertools.pairwise(loop))])


# ------------------------------------------------------------------------------------- tests
def test_engine_has_no_import_cycles() -> None:
    graph = import_graph(ENGINE)
    found = cycles(graph)
    assert not found, "import cycles in engine/ (break them by design, see the layer folders):\n" + "\n".join(
        describe_cycle(graph, c) for c in found
    )


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The graph includes function-local and TYPE_CHECKING imports, relative and absolute ones,
    `from . import module` and imports of a package's `__init__`."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": '"""Top."""\nfrom .a import f\n',
        "a.py": "def f():\n    from .sub import b\n    return b\n",
        "sub/__init__.py": '"""Sub."""\n',
        "sub/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n",
        "c.py": "import json\nimport pkg.sub\nfrom . import a\n",
        "d.py": "from pkg.c import C\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package)
    assert {m: sorted(e) for m, e in graph.items()} == {
        "pkg": ["pkg.a"],
        "pkg.a": ["pkg.sub.b"],
        "pkg.sub": [],
        "pkg.sub.b": ["pkg.c"],
        "pkg.c": ["pkg.a", "pkg.sub"],
        "pkg.d": ["pkg.c"],
    }
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert graph["pkg.a"]["pkg.sub.b"].where == "function-local"
    assert graph["pkg.sub.b"]["pkg.c"].where == "TYPE_CHECKING"
    message = describe_cycle(graph, ["pkg.a", "pkg.c", "pkg.sub.b"])
    assert message.splitlines()[0] == "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a"


def _packages() -> list[Path]:
    """Every folder under engine/ that holds Python code (and engine/ itself)."""
    return sorted({path.parent for path in ENGINE.rglob("*.py")})


@pytest.mark.parametrize("folder", _packages(), ids=lambda p: str(p.relative_to(ENGINE.parent)))
def test_every_layer_folder_says_what_it_is_for(folder: Path) -> None:
    init = folder / "__init__.py"
    assert init.is_file(), f"{folder.relative_to(ENGINE.parent)}/ holds Python code but has no __init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring, f"{init.relative_to(ENGINE.parent)}: start it with a docstring saying what this layer is for"
    summary, *rest = docstring.splitlines()
    assert summary.strip(), f"{init.relative_to(ENGINE.parent)}: the docstring's first line is the summary; it is blank"
    assert not rest or not rest[0].strip(), (
        f"{init.relative_to(ENGINE.parent)}: say what the layer is for in one line, then a blank line before any detail"
    )


#: The layers, lowest first; a module may import only from its own layer or a lower one. Layers on
#: one line are siblings and do not import each other. docs/architecture.md draws this.
LAYERS: list[set[str]] = [
    {"errors", "pointer", "config", "logs", "metrics", "observability"},  # engine/*.py: used everywhere
    {"alerts"},  # webhooks: accounts and pipeline emit into it
    {"mapping"},
    {"streaming"},
    {"spec", "accounts"},
    {"pipeline", "credentials"},
    {"web"},
    {"cli"},  # `serve` starts the web layer
]


def _layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    for level, members in enumerate(LAYERS):
        if name in members:
            return level, name
    return None  # engine itself, __main__: entry points, not layers


def test_every_module_belongs_to_a_layer() -> None:
    strays = sorted(m for m in import_graph(ENGINE) if m.count(".") >= 1 and _layer_of(m) is None
                    and m != "engine.__main__")
    assert not strays, f"modules outside every layer (add their folder to LAYERS and docs/architecture.md): {strays}"


def test_layers_import_only_downwards() -> None:
    graph = import_graph(ENGINE)
    upward = []
    for module, edges in graph.items():
        source = _layer_of(module)
        if source is None:
            continue
        for target, site in edges.items():
            dest = _layer_of(target)
            if dest is None:
                continue
            if dest[0] > source[0] or (dest[0] == source[0] and dest[1] != source[1]):
                upward.append(f"{source[1]} -> {dest[1]}: {site}")
    assert not upward, "imports against the layer order (see LAYERS):\n" + "\n".join(upward)
