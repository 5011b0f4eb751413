"""The repository stands alone: a user's clone has nothing beside it, so nothing in it may point outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: directories that are not the project's own text (built, installed or generated on the machine)
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "var",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
    ".hypothesis",
}
SKIPPED_SUFFIXES = {".png", ".jpg", ".ico", ".woff2", ".pyc"}

#: the folder that lies beside the repository on the team's machines (spelled in pieces: this file names no path)
SIBLING = "sha" + "red"
MACHINE_DIR = "work"
#: ways a file can reach outside the repository: the folder beside it, the parent of the root, this machine's
#: own directories
OUTSIDE = [
    (re.compile(r"\.\.[/\\]" + SIBLING), "the folder beside the repository"),
    (re.compile(r"[\"']" + SIBLING + r"[\"']\s*/"), "a folder beside the repository joined to a path"),
    (re.compile(r"\bROOT\.parent\b"), "the folder above the repository's root"),
    (re.compile(r"(?<![\w.])/" + MACHINE_DIR + "/"), "this machine's own directory"),
]


def _project_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()
        files = [ROOT / name for name in listed]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: every file under the root
        files = [p for p in ROOT.rglob("*") if p.is_file()]
    return [
        p
        for p in files
        if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts) and p.suffix not in SKIPPED_SUFFIXES
    ]


def test_the_scan_sees_the_project() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _project_files()}
    assert {"README.md", "Makefile", "pyproject.toml", "bench/ceiling.py", "docker-compose.yml"} <= names


def test_nothing_refers_to_a_path_outside_the_repository() -> None:
    found = []
    for path in _project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:120]}")
    assert not found, "files refer to paths outside the repository:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for() -> None:
    samples = [
        f"see ../{SIBLING}/bench/ceiling.py",
        f"see ..\\{SIBLING}\\bench",
        f'ROOT / "{SIBLING}" / "bench"',
        "ROOT" + ".parent / 'x'",
        f"cd /{MACHINE_DIR}/main && make",
    ]
    for sample in samples:
        assert any(p.search(sample) for p, _ in OUTSIDE), sample
    assert not any(p.search("a shared SQLite file; esi/work/x; ROOT / 'bench'") for p, _ in OUTSIDE)
