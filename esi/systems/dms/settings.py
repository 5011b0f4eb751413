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
