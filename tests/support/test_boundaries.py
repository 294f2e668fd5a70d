"""Unit tests and benchmarks share helpers through `tests/support`, never through `tests/e2e`:
importing an end-to-end module drags its fixtures and process stack into code that must not
depend on them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def e2e_imports(source: str) -> list[str]:
    """The `tests.e2e` modules that `source` imports (plain, from- and from-package imports)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found += [n for n in names if n == "tests.e2e" or n.startswith("tests.e2e.")]
    return found


def python_files_outside_e2e() -> list[Path]:
    e2e = ROOT / "tests" / "e2e"
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    return [f for f in files if not f.is_relative_to(e2e)]


def test_the_import_finder_sees_every_spelling_of_an_e2e_import() -> None:
    source = "import tests.e2e.tls\nfrom tests.e2e import conftest\nfrom tests.e2e.tls import x\n"
    assert e2e_imports(source) == [
        "tests.e2e.tls",
        "tests.e2e",
        "tests.e2e.conftest",
        "tests.e2e.tls",
        "tests.e2e.tls.x",
    ]
    assert e2e_imports("from tests.support.stack import IssuerProcess\nimport tests\n") == []


def test_no_unit_test_or_benchmark_imports_from_tests_e2e() -> None:
    files = python_files_outside_e2e()
    assert any(f.parts[-2] == "benchmarks" for f in files), "the benchmarks were not scanned"
    offenders = {
        str(f.relative_to(ROOT)): found
        for f in files
        if (found := e2e_imports(f.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "import these from tests/support instead"
