"""The package's import graph has no cycles (issue 28: one owner per concept, no circles).

The graph is read from the source with :mod:`ast`, not by importing it: every ``stabilitybench.*``
module (the folders that ``pyproject.toml``'s ``package-dir`` maps into the namespace) is a node,
and a module-level import of another one is an edge. Imports inside functions and under
``if TYPE_CHECKING:`` are left out (they run later, or never, so they cannot make a module
half-initialised); ``from pkg import name`` is an edge to ``pkg.name`` when that is a module,
else to ``pkg`` (its ``__init__``). A strongly connected component of more than one module is a
circle: the test prints each one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    """Every module of the installed namespace -> its source file, from pyproject's packages and package-dir."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs: dict[str, str] = setup["package-dir"]
    found: dict[str, Path] = {}
    for package in setup["packages"]:
        base = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / dirs[base] / Path(*package[len(base):].lstrip(".").split(".") if package != base else ())
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def edges(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that module ``name`` (source ``path``) imports at module level."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in _module_level(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` where only a.b is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: edges(name, path, set(mods)) for name, path in mods.items()}


def test_the_graph_is_read_from_every_subsystem() -> None:
    graph = import_graph()
    for package in ("stabilitybench.data_schema", "stabilitybench.generate", "stabilitybench.analysis",
                    "stabilitybench.reports", "stabilitybench.generate.backends"):
        assert package in graph
    # a few edges known to exist, so an empty graph (a parsing bug) cannot pass for a clean one
    assert "stabilitybench.generate.backends" in graph["stabilitybench.generate.runner"]
    assert "stabilitybench.generate.worker" in graph["stabilitybench.generate.backends.local_pool"]
    assert "stabilitybench.data_schema.compat" in graph["stabilitybench.data_schema.io"]


def test_cycles_finds_a_circle_and_ignores_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_edges_skip_function_and_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nimport p.a\nif TYPE_CHECKING:\n    import p.b\n"
                   "def f():\n    import p.c\ntry:\n    from p import d\nexcept ImportError:\n    pass\n"
                   "from . import e\n")
    assert edges("p.m", src, {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.m"}) == {"p.a", "p.d", "p.e"}


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (strongly connected components):\n" + "\n".join(
        " <-> ".join(c) for c in found)
