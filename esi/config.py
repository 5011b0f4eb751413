"""Settings, read from the environment and `.env` — only at the edges (`esi.cli`, `esi.runtime`).

Everything below the edges receives plain values through keyword-only constructors.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_RETRY_DELAYS = [1.0, 5.0, 30.0, 120.0, 600.0]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: object, *, name: str) -> float:
    """Seconds from `30d`, `12h`, `15m`, `90s`, `3600` or `1.5` (a number is seconds); `off` is 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "never", "disabled"):
            return 0.0
        unit = _UNITS.get(text[-1:]) if text else None
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise ValueError(f"{name} must be a duration such as 30d, 12h, 15m or seconds: {value!r}") from None
    else:  # a ValueError, which pydantic reports as the setting's validation error (a TypeError it would not)
        raise ValueError(f"{name} must be a duration such as 30d, 12h, 15m or seconds: {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{name} must be a positive duration (or 0 / off): {value!r}")
    return seconds


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every setting esi reads. Names are environment variables (case-insensitive); `.env` is read too."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    env: Literal["demo", "production"] = Field("demo", validation_alias=_env("ESI_ENV"))

    # --- who may use the API ---------------------------------------------------------------------------------------
    auth: Literal["on", "off"] = Field("on", validation_alias=_env("ESI_AUTH"))
    clients_file: str | None = Field(None, validation_alias=_env("ESI_CLIENTS_FILE"))
    clients_json: SecretStr | None = Field(None, validation_alias=_env("ESI_CLIENTS_JSON"))
    auth_cache_ttl: float = Field(60.0, ge=0, validation_alias=_env("ESI_AUTH_CACHE_TTL"))
    #: failed sign-ins of one client id from one address within the window, after which that pair gets 429
    auth_max_failures: int = Field(5, ge=1, le=1000, validation_alias=_env("ESI_AUTH_MAX_FAILURES"))
    auth_failure_window_s: float = Field(60.0, gt=0, le=86400, validation_alias=_env("ESI_AUTH_FAILURE_WINDOW"))
    #: the (client id, address) pairs remembered at most (least recently failed out first)
    auth_throttle_entries: int = Field(100_000, ge=1, validation_alias=_env("ESI_AUTH_THROTTLE_ENTRIES"))
    #: the proxies whose X-Forwarded-For is believed: addresses or CIDRs, comma-separated; none by default
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("ESI_TRUSTED_PROXIES")
    )
    #: API processes behind the load balancer: each enforces the clients' quotas divided by this
    api_replicas: int = Field(1, ge=1, le=1000, validation_alias=_env("ESI_API_REPLICAS"))
    #: the operator console's CSRF key, the same on every API replica; unset: each process draws its own
    console_secret: SecretStr | None = Field(None, validation_alias=_env("ESI_CONSOLE_SECRET"))
    #: the operator console's language when the browser's Accept-Language names neither English nor Russian (not
    #: named `lang`: with populate_by_name the field's own name is read too, and the locale's LANG is `C.UTF-8`)
    console_lang: Literal["en", "ru"] = Field("en", validation_alias=_env("ESI_LANG"))

    # --- TLS (HTTPS to each system: its own `<PREFIX>CA_BUNDLE`) ------------------------------------------------
    amqp_ca_file: str | None = Field(None, validation_alias=_env("ESI_AMQP_CA_FILE"))
    amqp_cert_file: str | None = Field(None, validation_alias=_env("ESI_AMQP_CERT_FILE"))
    amqp_key_file: str | None = Field(None, validation_alias=_env("ESI_AMQP_KEY_FILE"))
    tls_cert_file: str | None = Field(None, validation_alias=_env("ESI_TLS_CERT_FILE"))
    tls_key_file: str | None = Field(None, validation_alias=_env("ESI_TLS_KEY_FILE"))
    tls_client_ca_file: str | None = Field(None, validation_alias=_env("ESI_TLS_CLIENT_CA_FILE"))

    # --- broker -------------------------------------------------------------------------------------------------
    #: one node's URL, or several nodes' of one cluster, comma-separated (same vhost and credentials)
    amqp_url: SecretStr | None = Field(None, validation_alias=_env("ESI_AMQP_URL"))
    #: how long a process starting while no node answers waits for one (0: for ever)
    connect_timeout: float = Field(0.0, ge=0, validation_alias=_env("ESI_CONNECT_TIMEOUT"))
    rabbitmq_host: str | None = Field(None, validation_alias=_env("RABBITMQ_HOST"))
    rabbitmq_port: int = Field(5672, validation_alias=_env("RABBITMQ_PORT"))
    rabbitmq_username: str = Field("guest", validation_alias=_env("RABBITMQ_USERNAME", "RABBITMQ_USER"))
    rabbitmq_password: SecretStr = Field(SecretStr("guest"), validation_alias=_env("RABBITMQ_PASSWORD"))
    prefetch: int = Field(200, ge=1, le=10_000, validation_alias=_env("ESI_PREFETCH"))
    publish_timeout: float = Field(10.0, gt=0, validation_alias=_env("ESI_PUBLISH_TIMEOUT"))
    delivery_limit: int = Field(20, ge=1, validation_alias=_env("ESI_DELIVERY_LIMIT"))
    queue_max_length: int = Field(1_000_000, ge=1, validation_alias=_env("ESI_QUEUE_MAX_LENGTH"))

    # --- retries ------------------------------------------------------------------------------------------------
    retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_DELAYS), validation_alias=_env("ESI_RETRY_DELAYS")
    )
    max_attempts: int = Field(5, ge=1, le=100, validation_alias=_env("ESI_MAX_ATTEMPTS"))

    # --- store --------------------------------------------------------------------------------------------------
    database_url: str = Field("sqlite:///./var/esi.db", validation_alias=_env("ESI_DATABASE_URL"))
    outbox_max_backlog: int = Field(100_000, ge=1, validation_alias=_env("ESI_OUTBOX_MAX_BACKLOG"))
    inbox_retention_s: float = Field(7 * 86400, gt=0, validation_alias=_env("ESI_INBOX_RETENTION"))
    prune_interval_s: float = Field(3600, gt=0, validation_alias=_env("ESI_PRUNE_INTERVAL"))
    #: requests in a final state (and their business keys and timelines) older than this are deleted; 0: kept for ever
    request_retention_s: float = Field(30 * 86400, ge=0, validation_alias=_env("ESI_REQUEST_RETENTION"))
    retention_interval_s: float = Field(3600, gt=0, validation_alias=_env("ESI_RETENTION_INTERVAL"))

    # --- HTTP API for 1C ----------------------------------------------------------------------------------------
    http_host: str = Field("127.0.0.1", validation_alias=_env("ESI_HTTP_HOST"))
    #: the longest `GET /requests/{id}?wait=` may hold a request open, and how often one query looks up the
    #: requests waited on that another process settled
    max_wait_s: float = Field(30.0, ge=0, le=300, validation_alias=_env("ESI_MAX_WAIT"))
    wait_recheck_s: float = Field(1.0, gt=0, le=60, validation_alias=_env("ESI_WAIT_RECHECK"))
    http_port: int = Field(5000, validation_alias=_env("ESI_HTTP_PORT", "FLASK_PORT"))
    health_host: str = Field("127.0.0.1", validation_alias=_env("ESI_HEALTH_HOST"))
    health_port: int = Field(8080, validation_alias=_env("ESI_HEALTH_PORT"))
    #: how often each process runs its readiness checks for `esi_dependency_ready` besides every /readyz; 0: only then
    readiness_interval_s: float = Field(30.0, ge=0, validation_alias=_env("ESI_READINESS_INTERVAL"))
    max_pdf_bytes: int = Field(10 * 1024 * 1024, ge=1, validation_alias=_env("ESI_MAX_PDF_BYTES"))

    # --- the systems ------------------------------------------------------------------------------------------
    #: systems beyond the built-in ones, as `module:attribute` of an `esi.systems.spec.System` (comma-separated);
    #: each system reads its own settings (`DMS_*`, `CREATIO_*`, ...: `esi.systems.<code>.settings`)
    systems: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias=_env("ESI_SYSTEMS"))

    # --- the fakes (esi run --with-fakes) ----------------------------------------------------------------------
    fake_host: str = Field("127.0.0.1", validation_alias=_env("ESI_FAKE_HOST"))

    # --- the process -------------------------------------------------------------------------------------------
    #: net allocations of container objects between two young-generation collections of Python's cyclic garbage
    #: collector (Python's own default: 700); see docs/performance.md
    gc_threshold: int = Field(20_000, ge=100, le=10_000_000, validation_alias=_env("ESI_GC_THRESHOLD"))

    # --- logs ---------------------------------------------------------------------------------------------------
    log_level: str = Field("INFO", validation_alias=_env("ESI_LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field("json", validation_alias=_env("ESI_LOG_FORMAT"))

    @field_validator("systems", mode="before")
    @classmethod
    def _parse_systems(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            import ipaddress

            for part in value:
                try:
                    ipaddress.ip_network(str(part).strip(), strict=False)
                except ValueError:
                    raise ValueError(f"ESI_TRUSTED_PROXIES: {part!r} is not an IP address or a CIDR") from None
        return value

    @field_validator("request_retention_s", "retention_interval_s", "readiness_interval_s", mode="before")
    @classmethod
    def _parse_duration(cls, value: object, info: ValidationInfo) -> object:
        names = {
            "request_retention_s": "ESI_REQUEST_RETENTION",
            "retention_interval_s": "ESI_RETENTION_INTERVAL",
            "readiness_interval_s": "ESI_READINESS_INTERVAL",
        }
        return parse_duration(value, name=names[str(info.field_name)])

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"ESI_RETRY_DELAYS must be a JSON list of seconds such as [1, 5, 30]: {exc}") from exc
        if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise ValueError("ESI_RETRY_DELAYS must be a non-empty JSON list of positive numbers of seconds")
        return [float(v) for v in value]

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.env == "production" and self.auth == "off":
            raise ValueError("ESI_ENV=production refuses ESI_AUTH=off: the API always authenticates in production")
        return self

    def uses_default_broker_credentials(self) -> bool:
        url = self.broker_url()
        return "://guest:guest@" in url

    def broker_url(self) -> str:
        """The (first) AMQP URL: see `broker_urls`."""
        return self.broker_urls()[0]

    def broker_urls(self) -> list[str]:
        """The AMQP URLs of the broker's nodes: `ESI_AMQP_URL` split on commas, else one built from the original's
        `RABBITMQ_*` settings."""
        if self.amqp_url is not None:
            urls = [u.strip() for u in self.amqp_url.get_secret_value().split(",") if u.strip()]
            if not urls:
                raise ValueError("ESI_AMQP_URL is set but names no node")
            return urls
        host = self.rabbitmq_host or "localhost"
        user = quote(self.rabbitmq_username, safe="")
        password = quote(self.rabbitmq_password.get_secret_value(), safe="")
        return [f"amqp://{user}:{password}@{host}:{self.rabbitmq_port}/"]
