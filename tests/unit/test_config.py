"""Settings: the names the issue fixes, the original's variables, parsing, and secrets kept out of repr()."""

from __future__ import annotations

import gc

import pytest
from pydantic import ValidationError

from esi.config import Settings
from esi.runtime import settle_heap
from esi.systems.crm.settings import CreatioSettings
from esi.systems.dms.settings import DmsSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    for name in (
        "ESI_AMQP_URL",
        "RABBITMQ_HOST",
        "RABBITMQ_PORT",
        "RABBITMQ_USERNAME",
        "RABBITMQ_USER",
        "RABBITMQ_PASSWORD",
        "ESI_HTTP_PORT",
        "FLASK_PORT",
        "ESI_ENV",
        "CREATIO_PASSWORD",
        "ESI_AUTH",
        "ESI_RETRY_DELAYS",
        "ESI_MAX_ATTEMPTS",
        "ESI_DATABASE_URL",
        "CREATIO_URL",
        "DMS_URL",
        "DMS_MAX_CONCURRENCY",
        "ESI_FAKE_DMS_PORT",
        "ESI_SYSTEMS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_point_at_the_local_broker_sqlite_and_the_fakes() -> None:
    s = Settings()
    assert s.broker_url() == "amqp://guest:guest@localhost:5672/"
    assert s.database_url == "sqlite:///./var/esi.db"
    assert s.http_port == 5000
    assert CreatioSettings().url.endswith(":5100")
    assert DmsSettings().url.endswith(":5200")
    assert s.retry_delays == [1, 5, 30, 120, 600]
    assert s.max_attempts == 5
    assert s.systems == []
    assert s.gc_threshold == 20_000


def test_gc_threshold_is_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_GC_THRESHOLD", "700")
    assert Settings().gc_threshold == 700
    monkeypatch.setenv("ESI_GC_THRESHOLD", "0")  # 0 would switch the collector off: refused
    with pytest.raises(ValidationError, match="ESI_GC_THRESHOLD"):
        Settings()


def test_settle_heap_freezes_start_up_and_sets_the_young_threshold_only() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        settle_heap(12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_each_system_reads_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMS_URL", "https://dms.example")
    monkeypatch.setenv("DMS_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("ESI_FAKE_DMS_PORT", "5999")
    dms = DmsSettings()
    assert (dms.url, dms.max_concurrency, dms.fake_port) == ("https://dms.example", 7, 5999)
    assert CreatioSettings().url.endswith(":5100")
    assert CreatioSettings().max_concurrency == 32
    assert DmsSettings.env_name("url") == "DMS_URL"
    assert DmsSettings.env_name("fake_port") == "ESI_FAKE_DMS_PORT"
    monkeypatch.setenv("DMS_MAX_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="max_concurrency"):
        DmsSettings()


def test_extra_systems_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_SYSTEMS", "acme.wms:SYSTEM, acme.tms")
    assert Settings().systems == ["acme.wms:SYSTEM", "acme.tms"]


def test_the_original_systems_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_HOST", "rabbitmq")
    monkeypatch.setenv("RABBITMQ_PORT", "5673")
    monkeypatch.setenv("RABBITMQ_USERNAME", "esi")
    monkeypatch.setenv("RABBITMQ_PASSWORD", "p@ss/word")
    monkeypatch.setenv("FLASK_PORT", "5050")
    s = Settings()
    assert s.broker_url() == "amqp://esi:p%40ss%2Fword@rabbitmq:5673/"
    assert s.http_port == 5050
    monkeypatch.setenv("ESI_AMQP_URL", "amqp://a:b@elsewhere:5672/vh")
    assert Settings().broker_url() == "amqp://a:b@elsewhere:5672/vh"


def test_retry_ladder_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_RETRY_DELAYS", "[0.5, 2, 10]")
    assert Settings().retry_delays == [0.5, 2.0, 10.0]
    for bad in ("[]", "[1, -2]", "five", '["1"]'):
        monkeypatch.setenv("ESI_RETRY_DELAYS", bad)
        with pytest.raises(ValidationError, match="ESI_RETRY_DELAYS"):
            Settings()


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREATIO_PASSWORD", "creatio-secret-1")
    monkeypatch.setenv("RABBITMQ_PASSWORD", "rabbit-secret-2")
    monkeypatch.setenv("ESI_AMQP_URL", "amqp://u:amqp-secret-3@h:5672/")
    text = repr(Settings()) + str(Settings()) + repr(CreatioSettings())
    for secret in ("creatio-secret-1", "rabbit-secret-2", "amqp-secret-3"):
        assert secret not in text


def test_production_refuses_demo_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESI_ENV", "production")
    with pytest.raises(ValidationError, match="demo Creatio password"):
        CreatioSettings()
    monkeypatch.setenv("CREATIO_PASSWORD", "real-one")
    assert CreatioSettings().env == "production"
    monkeypatch.setenv("ESI_AUTH", "off")
    with pytest.raises(ValidationError, match="ESI_AUTH=off"):
        Settings()
    monkeypatch.setenv("ESI_AUTH", "on")
    assert Settings().env == "production"


def test_creatio_oauth_and_polling_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CRM_AUTH",
        "CRM_CLIENT_SECRET",
        "CRM_POLL_INTERVAL",
        "CREATIO_POLL_INTERVAL",
        "CRM_POLL_OBJECTS",
        "CRM_POLL_FROM",
    ):
        monkeypatch.delenv(name, raising=False)
    s = CreatioSettings()
    assert s.auth == "cookie"
    assert s.poll_interval == 0.0
    assert s.polled_objects == ["Order", "Contact"]
    assert s.poll_start is None
    monkeypatch.setenv("CRM_AUTH", "oauth")
    monkeypatch.setenv("CRM_POLL_INTERVAL", "1m")
    monkeypatch.setenv("CRM_POLL_OBJECTS", " Contact ,Order")
    monkeypatch.setenv("CRM_POLL_FROM", "2026-12-01T03:00:00+03:00")
    s = CreatioSettings()
    assert s.auth == "oauth"
    assert s.poll_interval == 60.0
    assert s.polled_objects == ["Contact", "Order"]
    assert s.poll_start is not None
    assert s.poll_start.isoformat() == "2026-12-01T00:00:00+00:00"
    monkeypatch.setenv("CRM_POLL_OBJECTS", "Order,Lead")
    with pytest.raises(ValidationError, match="cannot poll Lead"):
        CreatioSettings()
    monkeypatch.setenv("CRM_POLL_OBJECTS", "Order")
    monkeypatch.setenv("CRM_POLL_FROM", "last week")
    with pytest.raises(ValidationError, match="CRM_POLL_FROM"):
        CreatioSettings()
    monkeypatch.delenv("CRM_POLL_FROM")
    monkeypatch.setenv("CRM_POLL_INTERVAL", "soon")
    with pytest.raises(ValidationError, match="CRM_POLL_INTERVAL"):
        CreatioSettings()
    monkeypatch.setenv("CRM_POLL_INTERVAL", "30s")
    # production: OAuth needs a real client secret (the forms password is not used then)
    monkeypatch.setenv("ESI_ENV", "production")
    with pytest.raises(ValidationError, match="demo Creatio client secret"):
        CreatioSettings()
    monkeypatch.setenv("CRM_CLIENT_SECRET", "real-secret")
    assert CreatioSettings().client_secret.get_secret_value() == "real-secret"
    assert "real-secret" not in repr(CreatioSettings())
