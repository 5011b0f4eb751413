"""The DMS adapter's settings: `DMS_*` (and the fake's port)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from esi.systems.spec import SystemSettings


class DmsSettings(SystemSettings):
    model_config = SettingsConfigDict(env_prefix="DMS_", env_file=".env", extra="ignore", populate_by_name=True)

    url: str = Field("http://127.0.0.1:5200", description="the DMS (default: the fake)")
    api_key: SecretStr | None = Field(None, description="bearer token for the DMS, if it needs one")
    fake_port: int = Field(5200, validation_alias="ESI_FAKE_DMS_PORT", description="where `esi run fake-dms` listens")
    webhook_secret: SecretStr | None = Field(
        None,
        description="the shared secret the DMS signs its event webhook with (HMAC-SHA256 of the timestamp and body); "
        "unset: POST /events/dms/... refuses every call",
    )
    webhook_tolerance: float = Field(
        300.0, gt=0, le=86_400, description="seconds a signed webhook's timestamp may differ from esi's clock (replay)"
    )
    fake_webhook_url: str | None = Field(
        None,
        description="where the fake DMS sends its signed event webhook (esi's API, e.g. http://127.0.0.1:5000); "
        "unset: it sends none",
    )
