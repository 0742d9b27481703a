"""The package's import graph: no module imports, directly or through others, a module that
imports it back (eager and function-level imports alike)."""

import ast
from pathlib import Path

import oblr_theory

ROOT = Path(oblr_theory.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set) -> set:
    """Package modules that ``path`` imports (``from . import x`` resolves to the module ``x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "oblr_theory.results" in graph and "oblr_theory.verify.report" in graph
    assert "oblr_theory.results" in graph["oblr_theory.verify.report"]  # the graph sees real edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    """Negative control: ``results -> verify -> results`` (the circle this test guards against)."""
    graph = import_graph()
    graph["oblr_theory.results"] = graph["oblr_theory.results"] | {"oblr_theory.verify"}
    found = cycles(graph)
    assert any({"oblr_theory.results", "oblr_theory.verify"} <= set(c) for c in found)
