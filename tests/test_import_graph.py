"""The import graph of the real_vllm package, read from the source with ast: no cycles.

Every import counts, at module level or inside a function: a function-level import that closes
a cycle works only while the modules are imported in a lucky order, and it hides which layer
depends on which. Imports under `if TYPE_CHECKING:` never run and do not count. A module's edge
goes to the module it names (`from real_vllm.thf import curves` -> real_vllm.thf.curves), not
to the parent packages Python also initialises on the way.
"""

import ast
from pathlib import Path

import real_vllm

ROOT = Path(real_vllm.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes of a module, skipping the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports} over every .py file under ``root``."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: up from this module's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from a import b` imports the module a.b when there is one, else a name of a.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_reader_sees_a_cycle_hidden_in_a_function(tmp_path):
    """The reader on a planted package: a function-level import closing a cycle is found, a
    TYPE_CHECKING one is not, relative imports resolve."""
    pkg = tmp_path / "real_vllm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from real_vllm.sub.a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from real_vllm import d\n")
    (pkg / "d.py").write_text("import real_vllm.c\n")
    graph = import_graph(pkg)
    assert graph["real_vllm.sub.a"] == {"real_vllm.sub.b"} and graph["real_vllm.sub.b"] == {"real_vllm.sub.a"}
    assert graph["real_vllm.c"] == set() and graph["real_vllm.d"] == {"real_vllm.c"}
    assert cycles(graph) == [["real_vllm.sub.a", "real_vllm.sub.b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    # The reader sees the package: the THF runtime's own imports, for one.
    assert graph["real_vllm.thf.runtime"] == {"real_vllm.thf.curves", "real_vllm.thf.incremental", "real_vllm.thf.model",
                                              "real_vllm.thf.retokenize"}
    assert cycles(graph) == []


def test_nothing_outside_tests_imports_from_tests():
    """The package, the benchmarks and the kernels stand on their own: tests/ is imported only by
    tests (a benchmark that needs a baseline imports it from the package)."""
    checkout = ROOT.parent
    offenders = []
    for folder in ("real_vllm", "benchmarks", "kernels"):
        for path in sorted((checkout / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(checkout)}: imports {n}" for n in names
                              if n == "tests" or n.startswith("tests.")]
    assert not offenders, "\n".join(offenders)
