"""Import boundaries: esi.security knows nothing of the web framework nor of the API (the API depends on it, not the
other way round)."""

from __future__ import annotations

import ast
from pathlib import Path

import esi.security

FORBIDDEN = ("fastapi", "starlette", "esi.api")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_security_imports_neither_the_web_framework_nor_the_api() -> None:
    package = Path(esi.security.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        bad = sorted(m for m in _imports(module) if m.split(".")[0] in FORBIDDEN or m.startswith(FORBIDDEN))
        assert not bad, f"{module.name} imports {bad}"
