"""The 1C side's settings: `ONEC_*` — how esi delivers what 1C subscribes to (and, when asked, the outcome of its
own requests): pushed to a 1C HTTP service, or kept in a feed 1C's scheduled job reads (docs/1c.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from esi.systems.spec import SystemSettings


class OnecSettings(SystemSettings):
    model_config = SettingsConfigDict(env_prefix="ONEC_", env_file=".env", extra="ignore", populate_by_name=True)

    url: str = Field(
        "http://127.0.0.1:5300",
        validation_alias="ONEC_BASE_URL",
        description="the 1C HTTP service esi pushes to (http://erp/base/hs/esi; default: the fake 1C)",
    )
    username: str | None = Field(None, description="the 1C user esi pushes as (HTTP Basic)")
    password: SecretStr | None = Field(None, description="that user's password")
    delivery: Literal["push", "pull"] = Field(
        "push",
        description="push: POST each message to the 1C HTTP service; pull: keep it in the feed "
        "(GET /feed/1c) that a 1C scheduled job reads, for sites that open no port into 1C",
    )
    fake_port: int = Field(5300, validation_alias="ESI_FAKE_ONEC_PORT", description="where `esi run fake-1c` listens")
