"""credsidecar's modules import each other without a cycle.

The graph holds the imports a module runs when it is loaded: top-level `import` and `from`
statements, including those inside top-level `try`/`if` blocks, but not those inside functions
(lazy imports) or under `if TYPE_CHECKING:` (types only). A cycle there means two modules cannot
be understood, tested or loaded one without the other (the issuer's service and its HPC service
once were such a pair).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import credsidecar

PACKAGE = "credsidecar"
SOURCE = Path(credsidecar.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _load_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: not in functions or classes' methods, not under
    `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _load_time_imports(node.body)
            yield from _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _load_time_imports(block)
            for handler in node.handlers:
                yield from _load_time_imports(handler.body)
        elif isinstance(node, ast.With):
            yield from _load_time_imports(node.body)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _load_time_imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                # Importing a.b.c runs a/__init__ and a.b too; edges to the package modules we
                # know are what matters for cycles.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 while on the stack, 2 when done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_of_credsidecar_takes_part_in_an_import_cycle() -> None:
    graph = import_graph()
    assert "credsidecar.issuer.hpc_service" in graph  # the walk found the tree
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_a_cycle_and_ignores_lazy_and_type_only_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    tree = ast.parse(
        "import x\n"
        "if TYPE_CHECKING:\n    import y\n"
        "try:\n    import z\nexcept ImportError:\n    import w\n"
        "def f():\n    import lazy\n"
    )
    names = [a.name for n in _load_time_imports(tree.body) for a in n.names]
    assert names == ["x", "z", "w"]


def test_the_issuers_hpc_services_do_not_import_the_token_service() -> None:
    """They get a launch verifier at start-up (assembly.py), not the whole IssuerService."""
    graph = import_graph()
    for hpc in ("credsidecar.issuer.hpc_service", "credsidecar.issuer.hpc_launch"):
        assert "credsidecar.issuer.service" not in graph[hpc]
        assert hpc not in graph["credsidecar.issuer.service"]
