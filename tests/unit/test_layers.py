"""The Python packages form layers, bottom first: protocols, datapath,
slowpath, appliance (DESIGN.md, principle 6). No module imports from a
higher layer and no modules import each other in a circle, counting
imports inside function bodies: an import moved into a function to dodge
a cycle is still a cycle.

Every module's imports are read with ast (nothing is imported), relative
imports resolved, and ``from pkg import name`` counted as an import of
``pkg.name`` when that is a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("protocols", "datapath", "slowpath", "appliance")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name ``name``'s module imports, anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[:len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (edges to itself dropped)."""
    mods = module_files(root)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for n in imported_names(name, path):
            # `import a.b.c` also imports a and a.b: count the deepest project module
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n and n != name:
                deps.add(n)
        graph[name] = deps
    return graph


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, deps in graph.items() for b in deps if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative
    Tarjan: no recursion limit to meet on a deep chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_every_layer_has_modules():
    mods = module_files()
    for pkg in LAYERS:
        assert any(m.split(".")[0] == pkg for m in mods), pkg


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


# The checker itself, on a made-up tree: each rule must be able to fail.
@pytest.fixture
def fake_tree(tmp_path):
    def make(files: dict[str, str]) -> Path:
        for rel, text in files.items():
            p = tmp_path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        for pkg in LAYERS:
            (tmp_path / pkg).mkdir(exist_ok=True)
            (tmp_path / pkg / "__init__.py").touch()
        return tmp_path
    return make


def test_checker_sees_an_upward_import_inside_a_function(fake_tree):
    root = fake_tree({"datapath/a.py": "def f():\n    from slowpath import b\n", "slowpath/b.py": ""})
    # the package's __init__ runs too: both are upward
    assert upward_imports(import_graph(root)) == [("datapath.a", "slowpath"), ("datapath.a", "slowpath.b")]


def test_checker_sees_a_cycle_through_relative_and_function_imports(fake_tree):
    root = fake_tree({"datapath/a.py": "from .b import x\n",
                      "datapath/b.py": "def g():\n    from . import c\n",
                      "datapath/c.py": "import datapath.a\n"})
    assert cycles(import_graph(root)) == [["datapath.a", "datapath.b", "datapath.c"]]
    assert upward_imports(import_graph(root)) == []


def test_checker_passes_a_clean_tree(fake_tree):
    root = fake_tree({"protocols/p.py": "import os\n", "datapath/d.py": "from protocols import p\n",
                      "appliance/x.py": "from datapath.d import thing\nfrom slowpath import s\n",
                      "slowpath/s.py": "from ..datapath import d\n"})
    g = import_graph(root)
    assert g["appliance.x"] == {"datapath.d", "slowpath", "slowpath.s"}
    assert upward_imports(g) == [] and cycles(g) == []
