"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict` (a broken link, a page left out of
the navigation, an alert without a runbook entry fail it), the runbook covers every alert in both languages, the
Russian pages exist, and the README stays a short entry point with the quick start's two commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: the pages 1C integration engineers and the on-call read in Russian
RUSSIAN = ("getting-started", "1c", "creatio", "runbook", "troubleshooting")


def _mkdocs() -> str:
    found = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is missing on CI: it is in the dev extra (pip install -e '.[dev]')")
        pytest.skip("mkdocs is not installed: pip install -e '.[dev]' (mkdocs-material, mkdocs-static-i18n)")
    return found


def alert_names() -> list[str]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule["alert"] for group in document["groups"] for rule in group["rules"]]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [_mkdocs(), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    # the generated parts are there: the API's operations, the CLI, the metrics, the runbook's rules, both languages
    assert "/send_to_dms" in (site / "reference" / "http-api" / "index.html").read_text(encoding="utf-8")
    assert "esi dlq replay" in (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "esi_outbox_backlog" in (site / "reference" / "metrics" / "index.html").read_text(encoding="utf-8")
    assert (site / "reference" / "openapi.json").exists()
    for lang in ("", "ru/"):
        runbook = (site / lang / "runbook" / "index.html").read_text(encoding="utf-8")
        assert "esi_queue_messages" in runbook, lang  # EsiDeadLettersGrowing's expression, read from alerts.yml
        troubleshooting = (site / lang / "troubleshooting" / "index.html").read_text(encoding="utf-8")
        assert "request_id_conflict" in troubleshooting, lang


@pytest.mark.parametrize("page", ["runbook.md", "runbook.ru.md"])
def test_the_runbook_has_an_entry_per_alert(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for name in alert_names():
        assert re.search(rf"^## {name}\b", text, re.MULTILINE), f"{page}: no section for {name}"
        assert f"<!-- gen:alert {name} -->" in text, f"{page}: {name}'s section does not show its rule"


@pytest.mark.parametrize("page", RUSSIAN)
def test_the_russian_pages_exist(page: str) -> None:
    text = (DOCS / f"{page}.ru.md").read_text(encoding="utf-8")
    assert len(text) > 1500, page
    assert re.search("[а-яё]{4,}", text), f"{page}.ru.md is not in Russian"


def test_the_error_codes_are_explained_in_both_languages() -> None:
    codes = yaml.safe_load((DOCS / "gen" / "error_codes.yml").read_text(encoding="utf-8"))
    for code in ("unknown_target", "validation_error", "request_id_conflict", "backlog_full", "auth_failed"):
        assert code in codes, code
    for code, texts in codes.items():
        assert set(texts) <= {"en", "ru", "where"}, code
        assert texts.get("en"), code
        assert texts.get("ru"), code


def test_the_readme_is_a_short_entry_point_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert re.search(r"^make run +# ", readme, re.MULTILINE)
    assert re.search(r"^make test +# ", readme, re.MULTILINE)
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"the README links to {link}, which does not exist"
