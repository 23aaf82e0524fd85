"""The engine's import graph, read from the source: imports point down and the engine never imports a face.

Every `import` and `from ... import` anywhere in a module counts, inside functions included, so a cycle
hidden behind a function-local import fails here as a top-level one would.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACES = ("lab", "gradio", "ipywidgets", "plotly")
"""what only the page, the notebooks and the views may import"""


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package_dir` (package `__init__`s by package name)."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, anywhere in its file; relative imports resolved, and for
    `from X import Y` both X and X.Y (Y may be a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    files = module_files(package_dir)
    return {m: {n for n in imported_names(m, p) if n in files and n != m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected group of modules."""
    return [_cycle_through(sorted(group)[0], group, graph) for group in tangles(graph)]


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of two or more modules that all reach each other through imports (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def _cycle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from `start` back to itself inside `group` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


@pytest.mark.parametrize("package", ["sdpg", "lab"])
def test_no_import_cycle(package):
    graph = import_graph(ROOT / package)
    found = [f"{' -> '.join(_cycle_through(sorted(group)[0], group, graph))} (tangled: {', '.join(sorted(group))})"
             for group in tangles(graph)]
    assert not found, f"import cycles in {package}/ (function-local imports included):\n" + "\n".join(found)


def test_the_engine_never_imports_a_face():
    offenders = sorted(f"{module} imports {name}" for module, path in module_files(ROOT / "sdpg").items()
                       for name in imported_names(module, path) if name.split(".")[0] in FACES)
    assert not offenders, "sdpg/ must not import lab, gradio, ipywidgets or plotly:\n" + "\n".join(offenders)


def test_the_walker_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from .. import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg", "pkg.b"}, "pkg.b": {"pkg.sub", "pkg.sub.c"},
                     "pkg.sub.c": {"pkg", "pkg.a"}, "pkg.d": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_the_engine_the_views_and_the_page_never_import_the_experiments():
    files = {"app": ROOT / "app.py", **module_files(ROOT / "lab"), **module_files(ROOT / "sdpg")}
    offenders = sorted(f"{module} imports {name}" for module, path in files.items()
                       for name in imported_names(module, path) if name.split(".")[0] == "experiments")
    assert not offenders, ("the batch experiments are a layer above; runs are found and loaded by sdpg.runs:\n"
                           + "\n".join(offenders))
