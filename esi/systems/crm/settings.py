"""The CRM adapter's settings: `CREATIO_*`, the OAuth and polling ones `CRM_*` (`CRM_POLL_INTERVAL` also as the issue
named it, `CREATIO_POLL_INTERVAL`), and the fake's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from esi.config import parse_duration
from esi.systems.spec import SystemSettings

DEMO_PASSWORD = "Supervisor"  # noqa: S105 - the fake Creatio's documented demo login
#: the fake Identity Service's demo client application
DEMO_CLIENT_ID = "esi-demo"
DEMO_CLIENT_SECRET = "esi-demo-secret"  # noqa: S105 - the fake Creatio's documented demo client secret
#: the objects the poller can read, and the event each change becomes
POLLABLE = ("Order", "Contact")


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class CreatioSettings(SystemSettings):
    model_config = SettingsConfigDict(env_prefix="CREATIO_", env_file=".env", extra="ignore", populate_by_name=True)

    url: str = Field("http://127.0.0.1:5100", description="Creatio (default: the fake)")
    username: str = Field("Supervisor", description="the Creatio user esi acts as (CRM_AUTH=cookie)")
    password: SecretStr = Field(SecretStr(DEMO_PASSWORD), description="that user's password (CRM_AUTH=cookie)")
    odata_path: str = Field("/0/odata", description="/odata on .NET Core / .NET 8 builds of Creatio")
    #: the largest PDF attached to an order, as the API's own limit
    max_pdf_bytes: int = Field(10 * 1024 * 1024, ge=1, validation_alias="ESI_MAX_PDF_BYTES")
    fake_port: int = Field(
        5100, validation_alias="ESI_FAKE_CREATIO_PORT", description="where `esi run fake-creatio` listens"
    )

    # --- authentication -----------------------------------------------------------------------------------------
    auth: Literal["cookie", "oauth"] = Field(
        "cookie",
        validation_alias="CRM_AUTH",
        description="cookie: forms login (user, password, BPMCSRF); oauth: OAuth 2.0 client credentials (Creatio 8.x)",
    )
    identity_url: str | None = Field(
        None,
        validation_alias="CRM_IDENTITY_URL",
        description="the Identity Service (its /connect/token issues the tokens); unset: Creatio's own URL",
    )
    client_id: str = Field(
        DEMO_CLIENT_ID,
        validation_alias="CRM_CLIENT_ID",
        description="the client application's id in Creatio's OAuth integrations (CRM_AUTH=oauth)",
    )
    client_secret: SecretStr = Field(
        SecretStr(DEMO_CLIENT_SECRET),
        validation_alias="CRM_CLIENT_SECRET",
        description="its client secret (CRM_AUTH=oauth)",
    )
    token_margin: float = Field(
        60.0,
        ge=0,
        validation_alias="CRM_TOKEN_MARGIN",
        description="renew an access token this long before it expires (a duration; at most a tenth of its lifetime)",
    )

    # --- polling (the backstop of the business process's webhook) -----------------------------------------------
    poll_interval: float = Field(
        0.0,
        ge=0,
        validation_alias=_env("CRM_POLL_INTERVAL", "CREATIO_POLL_INTERVAL"),
        description="how often esi reads what changed in Creatio through OData (a duration); unset or 0: never",
    )
    poll_objects: str = Field(
        ",".join(POLLABLE),
        validation_alias="CRM_POLL_OBJECTS",
        description="the objects polled, comma-separated: Order (order_changed), Contact (contact_changed)",
    )
    poll_page_size: int = Field(
        100,
        ge=1,
        le=10_000,
        validation_alias="CRM_POLL_PAGE_SIZE",
        description="rows per OData page ($top); the watermark advances after each page",
    )
    poll_from: str | None = Field(
        None,
        validation_alias="CRM_POLL_FROM",
        description="where the first poll starts (ISO 8601); unset: at the newest change then (no history replayed)",
    )

    # --- the fake's business process ----------------------------------------------------------------------------
    fake_webhook_url: str | None = Field(
        None,
        validation_alias="CRM_FAKE_WEBHOOK_URL",
        description="the fake Creatio posts each change a manager makes to <url>/events/crm/<type>; unset: it does not",
    )
    fake_webhook_user: str | None = Field(None, validation_alias="CRM_FAKE_WEBHOOK_USER", description="its Basic user")
    #: the demo's own API client password, not a site's secret (no credential feeds it)
    fake_webhook_password: str | None = Field(
        None,
        validation_alias="CRM_FAKE_WEBHOOK_PASSWORD",
        description="its Basic password",
    )
    fake_token_lifetime: float = Field(
        3600.0,
        gt=0,
        validation_alias="CRM_FAKE_TOKEN_LIFETIME",
        description="the lifetime of the fake Identity Service's tokens (a duration)",
    )

    @field_validator("token_margin", "poll_interval", "fake_token_lifetime", mode="before")
    @classmethod
    def _durations(cls, value: object, info: ValidationInfo) -> object:
        return parse_duration(value, name=cls.env_name(str(info.field_name)))

    @field_validator("poll_objects")
    @classmethod
    def _known_objects(cls, value: str) -> str:
        unknown = [name for name in cls.split_objects(value) if name not in POLLABLE]
        if unknown:
            raise ValueError(f"CRM_POLL_OBJECTS: cannot poll {', '.join(unknown)}; choose from {', '.join(POLLABLE)}")
        return value

    @staticmethod
    def split_objects(value: str) -> list[str]:
        return [name.strip() for name in value.split(",") if name.strip()]

    @field_validator("poll_from")
    @classmethod
    def _iso_start(cls, value: str | None) -> str | None:
        if value:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"CRM_POLL_FROM must be an ISO 8601 time (2026-12-01T00:00:00Z): {value!r}") from None
        return value or None

    @property
    def poll_start(self) -> datetime | None:
        """`poll_from` as an aware UTC time (no offset: UTC)."""
        if not self.poll_from:
            return None
        start = datetime.fromisoformat(self.poll_from)
        return (start if start.tzinfo else start.replace(tzinfo=UTC)).astimezone(UTC)

    @property
    def polled_objects(self) -> list[str]:
        """The objects the poller reads, in order."""
        return self.split_objects(self.poll_objects)

    @model_validator(mode="after")
    def _no_demo_secrets_in_production(self) -> CreatioSettings:
        if self.env != "production":
            return self
        if self.auth == "cookie" and self.password.get_secret_value() == DEMO_PASSWORD:
            raise ValueError("ESI_ENV=production refuses the demo Creatio password: set CREATIO_PASSWORD")
        if self.auth == "oauth" and self.client_secret.get_secret_value() == DEMO_CLIENT_SECRET:
            raise ValueError("ESI_ENV=production refuses the demo Creatio client secret: set CRM_CLIENT_SECRET")
        return self
