"""The benchmark imports no test module: what it shares with the tests is the public harness, `esi.testing`."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _test_imports(source: str) -> list[str]:
    """Every import of `tests` or `tests.*` in `source`, at any depth (a lazy import in a function counts too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_the_benchmark_imports_no_test_module() -> None:
    modules = sorted(BENCH.glob("*.py"))
    assert {"run.py", "system.py", "cluster.py", "peer.py"} <= {p.name for p in modules}
    found = {p.name: bad for p in modules if (bad := _test_imports(p.read_text(encoding="utf-8")))}
    assert not found, f"bench/ imports test modules (use esi.testing): {found}"


def test_the_check_sees_every_spelling() -> None:
    for source in (
        "import tests.support",
        "import tests",
        "from tests.support import Vhost",
        "from tests import x",
        "def f():\n    from tests.support import free_port\n",
        "import os, tests.support as s",
    ):
        assert _test_imports(source), source
    for source in ("from esi.testing import Vhost", "import testsuite", "from .tests import x", "import pytest"):
        assert not _test_imports(source), source
