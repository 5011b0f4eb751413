"""The CRM adapter's settings: `CREATIO_*` (and the fake's port)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from esi.systems.spec import SystemSettings

DEMO_PASSWORD = "Supervisor"  # noqa: S105 - the fake Creatio's documented demo login


class CreatioSettings(SystemSettings):
    model_config = SettingsConfigDict(env_prefix="CREATIO_", env_file=".env", extra="ignore", populate_by_name=True)

    url: str = Field("http://127.0.0.1:5100", description="Creatio (default: the fake)")
    username: str = Field("Supervisor", description="the Creatio user esi acts as")
    password: SecretStr = Field(SecretStr(DEMO_PASSWORD), description="that user's password")
    odata_path: str = Field("/0/odata", description="/odata on .NET Core / .NET 8 builds of Creatio")
    #: the largest PDF attached to an order, as the API's own limit
    max_pdf_bytes: int = Field(10 * 1024 * 1024, ge=1, validation_alias="ESI_MAX_PDF_BYTES")
    fake_port: int = Field(
        5100, validation_alias="ESI_FAKE_CREATIO_PORT", description="where `esi run fake-creatio` listens"
    )

    @model_validator(mode="after")
    def _no_demo_password_in_production(self) -> CreatioSettings:
        if self.env == "production" and self.password.get_secret_value() == DEMO_PASSWORD:
            raise ValueError("ESI_ENV=production refuses the demo Creatio password: set CREATIO_PASSWORD")
        return self
