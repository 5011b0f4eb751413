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


def _package_imports(package: str) -> dict[str, set[str]]:
    root = Path(esi.security.__file__).parent.parent / package
    return {str(p.relative_to(root.parent)): _imports(p) for p in sorted(root.rglob("*.py"))}


def test_one_system_never_imports_another() -> None:
    systems = Path(esi.security.__file__).parent.parent / "systems"
    packages = sorted(p.name for p in systems.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert {"onec", "dms", "crm"} <= set(packages)
    for package in packages:
        for module, imports in _package_imports(f"systems/{package}").items():
            others = sorted(
                m for m in imports for other in packages if other != package and m.startswith(f"esi.systems.{other}")
            )
            assert not others, f"{module} imports another system: {others}"


def test_the_core_does_not_reach_up_into_systems_or_the_api() -> None:
    """messages and the bus are below the systems and the edges: they never import them."""
    for package, forbidden in (
        ("messages", ("esi.bus", "esi.systems", "esi.api", "esi.runtime")),
        ("bus", ("esi.systems", "esi.api", "esi.runtime")),
    ):
        for module, imports in _package_imports(package).items():
            bad = sorted(m for m in imports if m.startswith(forbidden))
            assert not bad, f"{module} imports {bad}"
