"""The release: the version, the lock files, the image, the systemd units, `esi config check|docs`, `esi check`."""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from esi import DISTRIBUTION
from esi.cli import app
from esi.cli.config import DOCS_FILE, REGENERATE, render_docs
from tests.unit.test_deployment import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SYSTEMD = ROOT / "deploy" / "systemd"
PREFIXES = ("ESI_", "RABBITMQ_", "CREATIO_", "DMS_", "FLASK_")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from this machine: no variable of esi's, no .env (another directory), an empty secrets dir."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setenv("ESI_SECRETS_DIR", str(secrets))
    return secrets


# --- the version ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_is_the_distributions_metadata(option: str) -> None:
    result = CliRunner().invoke(app, [option])
    assert result.exit_code == 0, result.output
    assert result.output == f"esi {version(DISTRIBUTION)}\n"
    assert version(DISTRIBUTION) == PYPROJECT["project"]["version"]
    assert PYPROJECT["project"]["name"] == DISTRIBUTION


def test_release_files() -> None:
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "the esi authors" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{PYPROJECT['project']['version']}]" in changelog, "CHANGELOG.md has no section of this version"
    assert (ROOT / "esi" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["esi"]
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output


# --- the lock files ------------------------------------------------------------------------------------------------


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            pins[current] = (pins[current][0], pins[current][1] + 1)
    return pins


@pytest.mark.parametrize(("lock", "groups"), [("requirements.lock", []), ("requirements-dev.lock", ["dev", "bench"])])
def test_lock_files_pin_every_dependency_inside_its_range(lock: str, groups: list[str]) -> None:
    project = PYPROJECT["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for group in groups for r in project["optional-dependencies"][group]]
    pins = _locked(ROOT / lock)
    regenerate = "regenerate the lock files as docs/install.md says (pip-compile --generate-hashes ...)"
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin {requirement.name}: {regenerate}"
        pinned, _hashes = pins[name]
        assert requirement.specifier.contains(pinned, prereleases=True), (
            f"{lock} pins {requirement.name}=={pinned}, outside {requirement}: {regenerate}"
        )
    assert all(hashes for _, hashes in pins.values()), f"every pin of {lock} carries its hashes"
    if not groups:  # the runtime lock has no development tool in it
        assert "pytest" not in pins
        assert "mypy" not in pins


# --- the image -----------------------------------------------------------------------------------------------------


def test_the_image_listens_on_every_interface_and_installs_from_the_lock() -> None:
    instructions = dockerfile_instructions()
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"(^|\s)ESI_HTTP_HOST=0\.0\.0\.0(\s|$)", env)
    assert re.search(r"(^|\s)ESI_HEALTH_HOST=0\.0\.0\.0(\s|$)", env)
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    locked = [run for run in runs if "-r requirements.lock" in run]
    assert locked, "the image installs its dependencies from requirements.lock"
    assert all("--require-hashes" in run for run in locked)
    assert not any("pip install -r /tmp" in run or "tomllib" in run for run in runs), "nothing resolved unlocked"
    copies = [args for keyword, args in instructions if keyword == "COPY"]
    assert any(c.split()[0] == "requirements.lock" for c in copies)
    # and the loopback default outside a container
    from esi.config import Settings

    assert Settings.model_fields["http_host"].default == "127.0.0.1"
    assert Settings.model_fields["health_host"].default == "127.0.0.1"


# --- the systemd units ---------------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """[Section] -> (Key, value) in order (systemd repeats keys: LoadCredential=, Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, [])
            continue
        assert section is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=value"
        sections[section].append((key.strip(), value.strip()))
    return sections


@pytest.mark.parametrize("name", ["esi-api.service", "esi@.service"])
def test_systemd_units_are_hardened(name: str) -> None:
    service = _unit(SYSTEMD / name)["Service"]
    values = dict(service)
    assert values["User"] == "esi"
    assert values["ProtectSystem"] == "strict"
    assert values["ProtectHome"] in ("yes", "true", "read-only", "tmpfs")
    assert values["PrivateTmp"] in ("yes", "true")
    assert values["NoNewPrivileges"] in ("yes", "true")
    assert "/var/lib/esi" in values["ReadWritePaths"].split()
    assert values["Restart"] == "on-failure"
    assert float(values["RestartSec"]) > 0
    # longer than the longest held request (ESI_MAX_WAIT <= 300 s by default 30) plus a publish confirm
    assert int(values["TimeoutStopSec"]) >= 60
    assert values["ExecStart"].startswith("/opt/esi/venv/bin/esi run ")
    assert values["EnvironmentFile"] == "/etc/esi/esi.env"
    credentials = {v.split(":", 1)[0] for k, v in service if k == "LoadCredential"}
    files = dict(v.split("=", 1) for k, v in service if k == "Environment")
    assert {"ESI_AMQP_URL_FILE", "ESI_DATABASE_URL_FILE"} <= set(files)
    for variable, path in files.items():
        if variable.endswith("_FILE"):
            assert path.startswith("%d/"), f"{variable} must read the service's credentials directory"
            assert path.removeprefix("%d/") in credentials, f"{variable} names a credential not loaded"
    assert _unit(SYSTEMD / name)["Install"] == [("WantedBy", "multi-user.target")]


def test_systemd_drop_ins_feed_each_systems_secret_and_health_port() -> None:
    from esi.systems.registry import load_registry

    registry = load_registry()
    ports = set()
    for system in registry.systems:
        if system.origin or system.settings is None:
            continue
        service = _unit(SYSTEMD / f"esi@{system.service}.service.d" / "credentials.conf")["Service"]
        credentials = {v.split(":", 1)[0] for k, v in service if k == "LoadCredential"}
        files = dict(v.split("=", 1) for k, v in service if k == "Environment")
        secrets = [
            system.settings.env_name(f)
            for f, info in system.settings.model_fields.items()
            if "SecretStr" in str(info.annotation)
        ]
        for secret in secrets:
            assert f"{secret}_FILE" in files, f"esi@{system.service} does not feed {secret} from a credential"
            assert files[f"{secret}_FILE"].removeprefix("%d/") in credentials
        ports.add(files["ESI_HEALTH_PORT"])
    assert len(ports) == len([s for s in registry.systems if not s.origin and s.settings is not None])


def test_systemd_env_example_is_valid_settings(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from esi.config import Settings

    values = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "esi.env").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CREATIO_PASSWORD", "not-the-demo-one")
    settings = Settings()
    assert settings.env == "production"


# --- esi config check ----------------------------------------------------------------------------------------------


def test_config_check_names_every_problem(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ESI_AMQP_URL", "htp://esi:hunter2secret@x")
    monkeypatch.setenv("DMS_API_KEY_FILE", str(tmp_path / "missing-key"))
    monkeypatch.setenv("ESI_REPLICAS", "2")  # on the default SQLite store
    monkeypatch.setenv("CREATIO_TIMEOUT", "-1")
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 1, result.output
    assert "4 problem(s)" in result.output
    problems = result.output.split("problem(s) in the settings:", 1)[1]
    assert "ESI_AMQP_URL=htp://esi:***@x" in problems
    assert "is not an AMQP URL" in problems
    assert f"DMS_API_KEY_FILE: DMS_API_KEY_FILE={tmp_path / 'missing-key'}: cannot read the file" in problems
    assert "ESI_REPLICAS=2" in problems
    assert "SQLite" in problems
    assert "CREATIO_TIMEOUT=-1" in problems
    assert "greater than 0" in problems
    assert "hunter2secret" not in result.output


def test_config_check_prints_masked_settings_with_their_sources(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "amqp").write_text("amqp://esi:amqp-secret-1@broker:5672/esi\n", encoding="utf-8")
    monkeypatch.setenv("ESI_AMQP_URL_FILE", str(tmp_path / "amqp"))
    monkeypatch.setenv("CREATIO_PASSWORD", "creatio-secret-2")
    (clean_environment / "DMS_API_KEY").write_text("dms-secret-3", encoding="utf-8")
    (tmp_path / ".env").write_text("ESI_DATABASE_URL=postgresql://esi:pg-secret-4@db:5432/esi\n", encoding="utf-8")
    monkeypatch.setenv("ESI_REPLICAS", "3")
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    for secret in ("amqp-secret-1", "creatio-secret-2", "dms-secret-3", "pg-secret-4"):
        assert secret not in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert "amqp://esi:***@broker:5672/esi" in lines["ESI_AMQP_URL"]
    assert f"file ESI_AMQP_URL_FILE ({tmp_path / 'amqp'})" in lines["ESI_AMQP_URL"]
    assert "********" in lines["CREATIO_PASSWORD"]
    assert "environment variable CREATIO_PASSWORD" in lines["CREATIO_PASSWORD"]
    assert "secrets dir" in lines["DMS_API_KEY"]
    assert "postgresql://esi:***@db:5432/esi" in lines["ESI_DATABASE_URL"]
    assert ".env (ESI_DATABASE_URL)" in lines["ESI_DATABASE_URL"]
    assert lines["ESI_PREFETCH"].split()[-1] == "default"
    assert "environment variable ESI_REPLICAS" in lines["ESI_REPLICAS"]
    assert "settings OK" in result.output


# --- the configuration reference -----------------------------------------------------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    committed = (ROOT / DOCS_FILE).read_text(encoding="utf-8") if (ROOT / DOCS_FILE).exists() else ""
    assert committed == render_docs(), f"{DOCS_FILE} is out of date: run `{REGENERATE}` and commit it"


def test_configuration_reference_lists_every_variable_and_masks_secrets() -> None:
    text = render_docs()
    for variable in ("ESI_AMQP_URL", "ESI_REPLICAS", "CREATIO_PASSWORD", "DMS_API_KEY", "RABBITMQ_PASSWORD"):
        assert f"`{variable}`" in text
    assert "| `RABBITMQ_PASSWORD` | secret | `********` |" in text
    assert "Supervisor`" not in text.split("`CREATIO_PASSWORD`", 1)[1].split("\n", 1)[0]


def test_config_docs_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "docs", "--output", str(stale), "--check"])
    assert result.exit_code == 1
    assert "esi config docs --output" in result.output
    assert CliRunner().invoke(app, ["config", "docs", "--output", str(stale)]).exit_code == 0
    assert CliRunner().invoke(app, ["config", "docs", "--output", str(stale), "--check"]).exit_code == 0


# --- esi check -----------------------------------------------------------------------------------------------------


def test_check_store_and_the_choices(clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_DATABASE_URL", f"sqlite:///{tmp_path}/esi.db")
    result = CliRunner().invoke(app, ["check", "store"])
    assert result.exit_code == 0, result.output
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    monkeypatch.setenv("ESI_DATABASE_URL", f"sqlite:///{tmp_path}/a-file/esi.db")  # a directory that cannot be
    result = CliRunner().invoke(app, ["check", "store"])
    assert result.exit_code == 1
    assert "the store does not answer" in result.output
    result = CliRunner().invoke(app, ["check", "nothing"])
    assert result.exit_code == 2
    assert "broker, postgres, store, 1c, crm, dms, all" in result.output
