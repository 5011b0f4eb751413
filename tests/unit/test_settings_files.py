"""Settings from files: `NAME_FILE` and the secrets directory, for `Settings` and every system's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import esi.config
from esi.config import Settings, collect_problems, sources_of
from esi.runtime.services import SettingsError, system_settings
from esi.systems.crm import SYSTEM as CRM
from esi.systems.crm.settings import CreatioSettings
from esi.systems.dms.settings import DmsSettings

PREFIXES = ("ESI_", "RABBITMQ_", "CREATIO_", "DMS_", "FLASK_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from this machine: no variable of esi's, no .env (another directory), an empty secrets dir."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setenv("ESI_SECRETS_DIR", str(secrets))
    return secrets


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_secret_from_its_file_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESI_AMQP_URL_FILE", _file(tmp_path, "amqp", "amqp://esi:s3cret@broker:5672/esi\n"))
    monkeypatch.setenv("ESI_DATABASE_URL_FILE", _file(tmp_path, "db", "postgresql://esi:pg@db:5432/esi"))
    monkeypatch.setenv("ESI_CLIENTS_JSON_FILE", _file(tmp_path, "clients", '{"clients": []}\n'))
    monkeypatch.setenv("CREATIO_PASSWORD_FILE", _file(tmp_path, "creatio", "creatio-pw\n"))
    monkeypatch.setenv("DMS_API_KEY_FILE", _file(tmp_path, "dms", "dms-key"))
    settings = Settings()
    assert settings.amqp_url is not None
    assert settings.amqp_url.get_secret_value() == "amqp://esi:s3cret@broker:5672/esi"  # one trailing newline dropped
    assert settings.database_url == "postgresql://esi:pg@db:5432/esi"
    assert settings.clients_json is not None
    assert settings.clients_json.get_secret_value() == '{"clients": []}'
    assert CreatioSettings().password.get_secret_value() == "creatio-pw"
    key = DmsSettings().api_key
    assert key is not None
    assert key.get_secret_value() == "dms-key"
    assert sources_of(Settings)["amqp_url"] == f"file ESI_AMQP_URL_FILE ({tmp_path / 'amqp'})"


def test_every_secret_from_the_secrets_dir(clean_environment: Path) -> None:
    (clean_environment / "ESI_AMQP_URL").write_text("amqp://esi:dir@broker/\n", encoding="utf-8")
    (clean_environment / "DMS_API_KEY").write_text("dir-key", encoding="utf-8")
    (clean_environment / "creatio_password").write_text("dir-pw", encoding="utf-8")  # Compose's names: any case
    settings = Settings()
    assert settings.amqp_url is not None
    assert settings.amqp_url.get_secret_value() == "amqp://esi:dir@broker/"
    key = DmsSettings().api_key
    assert key is not None
    assert key.get_secret_value() == "dir-key"
    assert CreatioSettings().password.get_secret_value() == "dir-pw"
    assert sources_of(DmsSettings)["api_key"] == f"secrets dir ({clean_environment / 'DMS_API_KEY'})"
    assert sources_of(DmsSettings)["url"] == "default"


def test_run_secrets_is_the_default_secrets_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ESI_SECRETS_DIR")
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    (run_secrets / "RABBITMQ_PASSWORD").write_text("from-run-secrets", encoding="utf-8")
    monkeypatch.setattr(esi.config, "DEFAULT_SECRETS_DIR", str(run_secrets))
    assert Settings().rabbitmq_password.get_secret_value() == "from-run-secrets"
    monkeypatch.setattr(esi.config, "DEFAULT_SECRETS_DIR", str(tmp_path / "absent"))
    assert Settings().rabbitmq_password.get_secret_value() == "guest"  # no such directory: not an error


def test_precedence_environment_then_file_then_dotenv_then_secrets_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environment: Path
) -> None:
    (clean_environment / "DMS_URL").write_text("http://from-dir", encoding="utf-8")
    assert DmsSettings().url == "http://from-dir"
    (tmp_path / ".env").write_text("DMS_URL=http://from-dotenv\n", encoding="utf-8")
    assert DmsSettings().url == "http://from-dotenv"
    assert sources_of(DmsSettings)["url"] == ".env (DMS_URL)"
    monkeypatch.setenv("DMS_URL_FILE", _file(tmp_path, "url", "http://from-file"))
    assert DmsSettings().url == "http://from-file"
    monkeypatch.delenv("DMS_URL_FILE")
    monkeypatch.setenv("DMS_URL", "http://from-env")
    assert DmsSettings().url == "http://from-env"
    assert sources_of(DmsSettings)["url"] == "environment variable DMS_URL"


def test_a_missing_file_is_an_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DMS_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match=r"DMS_API_KEY_FILE=.*absent: cannot read the file"):
        DmsSettings()
    monkeypatch.setenv("ESI_AMQP_URL_FILE", str(tmp_path / "absent-too"))
    with pytest.raises(ValidationError, match="ESI_AMQP_URL_FILE"):
        Settings()
    # `esi run` reports a system's as its invalid settings (exit 2)
    monkeypatch.setenv("CREATIO_PASSWORD_FILE", str(tmp_path / "no-password"))
    with pytest.raises(SettingsError, match="CREATIO_PASSWORD_FILE"):
        system_settings(CRM)


def test_a_variable_and_its_file_at_once_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DMS_API_KEY", "one")
    monkeypatch.setenv("DMS_API_KEY_FILE", _file(tmp_path, "key", "other"))
    with pytest.raises(ValidationError, match="set either DMS_API_KEY or DMS_API_KEY_FILE, not both"):
        DmsSettings()


def test_a_secrets_dir_that_is_not_a_directory_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESI_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValidationError, match=r"ESI_SECRETS_DIR=.*nowhere is not a directory"):
        Settings()


def test_collecting_finds_every_unreadable_file_in_one_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESI_AMQP_URL_FILE", str(tmp_path / "a"))
    monkeypatch.setenv("ESI_DATABASE_URL_FILE", str(tmp_path / "b"))
    with collect_problems() as problems:
        settings = Settings()  # the unreadable settings left to their defaults
    assert settings.amqp_url is None
    assert [p.variable for p in problems] == ["ESI_AMQP_URL_FILE", "ESI_DATABASE_URL_FILE"]


def test_bad_urls_and_sqlite_with_replicas_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_AMQP_URL", "htp://x")
    monkeypatch.setenv("ESI_DATABASE_URL", "mysql://db/esi")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert {str(e["loc"][0]) for e in caught.value.errors()} == {"ESI_AMQP_URL", "ESI_DATABASE_URL"}
    monkeypatch.delenv("ESI_AMQP_URL")
    monkeypatch.delenv("ESI_DATABASE_URL")
    monkeypatch.setenv("ESI_REPLICAS", "2")
    with pytest.raises(ValidationError, match="SQLite is one process's file"):
        Settings()
    monkeypatch.setenv("ESI_DATABASE_URL", "postgresql://esi@db/esi")
    assert Settings().replicas == 2
    monkeypatch.setenv("ESI_AMQP_URL", "amqp://a:b@n1:5672/, amqps://a:b@n2:5671/")
    assert len(Settings().broker_urls()) == 2
