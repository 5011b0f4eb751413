"""Settings, read from the environment and `.env` — only at the edges (`esi.cli`, `esi.runtime`).

Everything below the edges receives plain values through keyword-only constructors.

Any setting `NAME` can also come from a file (secrets above all: `ESI_AMQP_URL`, `CREATIO_PASSWORD`, `DMS_API_KEY`,
...), in this order of precedence:

1. the environment variable `NAME`;
2. the file named by the environment variable `NAME_FILE` (systemd's `LoadCredential=`, Kubernetes' mounted
   secrets); a missing or unreadable file is an error naming `NAME_FILE`, and so is setting both `NAME` and
   `NAME_FILE`;
3. `NAME` in `.env`;
4. a file `NAME` in the secrets directory: `ESI_SECRETS_DIR`, else `/run/secrets` when it exists (Docker's and
   Compose's secrets);
5. the default.

`SecretFilesSource` implements 2 and 4 once, for `Settings` and for every system's `SystemSettings`
(`with_secret_files`); `sources_of` says where each value came from (`esi config check`).

One job in one module, though over 400 lines: every core setting, its variable, default, bounds and description
(the configuration reference is generated from them), and the sources they are read from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

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


# --- settings from files ----------------------------------------------------------------------------------------

#: where Docker and Compose mount secrets; the secrets directory when `ESI_SECRETS_DIR` is not set and it exists
DEFAULT_SECRETS_DIR = "/run/secrets"
#: the largest file a setting is read from (a secret, a URL, a JSON document of clients)
MAX_SETTING_FILE_BYTES = 1024 * 1024


def env_names(settings_cls: type[BaseSettings], field_name: str) -> list[str]:
    """The environment variables that set `field_name` of `settings_cls`, the preferred one first."""
    info = settings_cls.model_fields[field_name]
    alias = info.validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices]
    return [f"{settings_cls.model_config.get('env_prefix', '')}{field_name}".upper()]


def _field_key(field_name: str, info: FieldInfo) -> str:
    """The key pydantic-settings' own sources give a field's value under (its first alias, else its name)."""
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field_name


def _environ(name: str) -> str | None:
    """An environment variable, case-insensitively (as pydantic-settings reads them)."""
    if name in os.environ:
        return os.environ[name]
    lowered = name.lower()
    return next((value for key, value in os.environ.items() if key.lower() == lowered), None)


def mask_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`; several comma-separated URLs each."""
    if "," in url:
        return ",".join(mask_url(part) for part in url.split(","))
    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def secrets_dir() -> Path | None:
    """The secrets directory: `ESI_SECRETS_DIR`, else `/run/secrets` when it exists, else none."""
    configured = _environ("ESI_SECRETS_DIR")
    if configured:
        return Path(configured)
    default = Path(DEFAULT_SECRETS_DIR)
    return default if default.is_dir() else None


@dataclass(frozen=True)
class SettingProblem:
    """A setting that cannot be read: the variable that names it and what is wrong."""

    variable: str
    message: str


#: while `collect_problems` runs, the file sources record what they cannot read here instead of raising
_collected: ContextVar[list[SettingProblem] | None] = ContextVar("esi_setting_problems", default=None)


@contextlib.contextmanager
def collect_problems() -> Iterator[list[SettingProblem]]:
    """Within it, a file that cannot be read is recorded (and its setting left to the next source) rather than
    raised, so that one pass over the settings finds every problem (`esi config check`)."""
    problems: list[SettingProblem] = []
    token = _collected.set(problems)
    try:
        yield problems
    finally:
        _collected.reset(token)


def _read_setting_file(path: Path) -> str:
    if path.stat().st_size > MAX_SETTING_FILE_BYTES:
        raise ValueError(f"larger than {MAX_SETTING_FILE_BYTES} bytes")
    # one trailing newline (echo, editors) is not part of the value
    return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")


class SecretFilesSource(PydanticBaseSettingsSource):
    """Settings from files: `NAME_FILE` (`kind="file"`) or a file `NAME` in the secrets directory
    (`kind="dir"`), for every field of the settings class; see the module's docstring for the precedence."""

    def __init__(self, settings_cls: type[BaseSettings], kind: Literal["file", "dir"]) -> None:
        super().__init__(settings_cls)
        self.kind = kind

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # the whole work is in __call__ (one pass, all the problems at once)
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        problems: list[SettingProblem] = []
        directory = secrets_dir() if self.kind == "dir" else None
        if self.kind == "dir" and directory is not None and not directory.is_dir():
            problems.append(SettingProblem("ESI_SECRETS_DIR", f"ESI_SECRETS_DIR={directory} is not a directory"))
            directory = None
        for field_name, info in self.settings_cls.model_fields.items():
            found = self._find(field_name, directory, problems)
            if found is not None:
                values[_field_key(field_name, info)] = found
        if problems:
            collecting = _collected.get()
            if collecting is None:
                raise _problems_error(self.settings_cls, problems)
            collecting.extend(problems)
        return values

    def _find(self, field_name: str, directory: Path | None, problems: list[SettingProblem]) -> str | None:
        for name in env_names(self.settings_cls, field_name):
            if self.kind == "file":
                variable = f"{name}_FILE"
                path = _environ(variable)
                if not path:
                    continue
                if _environ(name) is not None:
                    problems.append(SettingProblem(variable, f"set either {name} or {variable}, not both"))
                    return None
                try:
                    return _read_setting_file(Path(path))
                except (OSError, ValueError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    problems.append(SettingProblem(variable, f"{variable}={path}: cannot read the file ({reason})"))
                    return None
            elif directory is not None:
                for candidate in (directory / name, directory / name.lower()):
                    if candidate.is_file():
                        try:
                            return _read_setting_file(candidate)
                        except (OSError, ValueError) as exc:
                            problems.append(SettingProblem(name, f"{candidate}: cannot read the secret ({exc})"))
                            return None
        return None


def _problems_error(settings_cls: type[BaseSettings], problems: list[SettingProblem]) -> ValidationError:
    """The problems as a pydantic ValidationError, as an invalid value would be (the callers report those)."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("setting_file", "{message}", {"message": problem.message}),
            loc=(problem.variable,),
            input=None,
        )
        for problem in problems
    ]
    return ValidationError.from_exception_data(settings_cls.__name__, details)


def with_secret_files(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources of a settings class in esi's order (a `settings_customise_sources` returns this)."""
    return (
        init_settings,
        env_settings,
        SecretFilesSource(settings_cls, "file"),
        dotenv_settings,
        SecretFilesSource(settings_cls, "dir"),
    )


class FileSecretsSettings(BaseSettings):
    """Settings read in esi's order of sources (`with_secret_files`): the core's `Settings` and every system's
    `SystemSettings` derive from it."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return with_secret_files(settings_cls, init_settings, env_settings, dotenv_settings)


def sources_of(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Where each field's value comes from, by field name, in the order `with_secret_files` reads them:
    `environment variable NAME`, `file NAME_FILE (path)`, `.env (NAME)`, `secrets dir (path)` or `default`."""
    env_file = settings_cls.model_config.get("env_file")
    dotenv: dict[str, str | None] = {}
    if isinstance(env_file, str) and Path(env_file).is_file():
        dotenv = {key.upper(): value for key, value in dotenv_values(env_file).items()}
    directory = secrets_dir()
    found: dict[str, str] = {}
    for field_name in settings_cls.model_fields:
        names = env_names(settings_cls, field_name)
        source = "default"
        for check in ("env", "file", "dotenv", "dir"):
            hit = next(
                (_source(check, name, dotenv, directory) for name in names if _source(check, name, dotenv, directory)),
                None,
            )
            if hit:
                source = hit
                break
        found[field_name] = source
    return found


def _source(check: str, name: str, dotenv: dict[str, str | None], directory: Path | None) -> str | None:
    if check == "env":
        return f"environment variable {name}" if _environ(name) is not None else None
    if check == "file":
        path = _environ(f"{name}_FILE")
        return f"file {name}_FILE ({path})" if path else None
    if check == "dotenv":
        return f".env ({name})" if name in dotenv else None
    if directory is not None and directory.is_dir():
        for candidate in (directory / name, directory / name.lower()):
            if candidate.is_file():
                return f"secrets dir ({candidate})"
    return None


class Settings(FileSecretsSettings):
    """Every setting esi reads. Names are environment variables (case-insensitive); `.env` is read too, and any
    setting can come from a file (`NAME_FILE`, the secrets directory: see the module's docstring)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    env: Literal["demo", "production"] = Field(
        "demo",
        validation_alias=_env("ESI_ENV"),
        description="demo (demo credentials allowed) or production (refuses them and ESI_AUTH=off)",
    )

    # --- who may use the API ---------------------------------------------------------------------------------------
    auth: Literal["on", "off"] = Field(
        "on", validation_alias=_env("ESI_AUTH"), description="whether the API authenticates its clients"
    )
    clients_file: str | None = Field(
        None, validation_alias=_env("ESI_CLIENTS_FILE"), description="a JSON file of the API's clients"
    )
    clients_json: SecretStr | None = Field(
        None, validation_alias=_env("ESI_CLIENTS_JSON"), description="the API's clients as a JSON document"
    )
    auth_cache_ttl: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("ESI_AUTH_CACHE_TTL"),
        description="seconds a verified client's credentials are remembered",
    )
    console_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("ESI_CONSOLE_SECRET"),
        description="the operator console's CSRF key, the same on every API replica; unset: each process draws its own",
    )
    auth_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        validation_alias=_env("ESI_AUTH_MAX_FAILURES"),
        description="failed sign-ins of one client id from one address in the window, after which that pair gets 429",
    )
    auth_failure_window_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        validation_alias=_env("ESI_AUTH_FAILURE_WINDOW"),
        description="the window of failed sign-ins, seconds",
    )
    auth_throttle_entries: int = Field(
        100_000,
        ge=1,
        validation_alias=_env("ESI_AUTH_THROTTLE_ENTRIES"),
        description="the (client id, address) pairs remembered at most (least recently failed out first)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("ESI_TRUSTED_PROXIES"),
        description="the proxies whose X-Forwarded-For is believed: addresses or CIDRs, comma-separated",
    )
    api_replicas: int = Field(
        1,
        ge=1,
        le=1000,
        validation_alias=_env("ESI_API_REPLICAS"),
        description="API processes behind the load balancer: each enforces the clients' quotas divided by this",
    )
    #: not named `lang`: with populate_by_name the field's own name is read too, and the locale's LANG is `C.UTF-8`
    console_lang: Literal["en", "ru"] = Field(
        "en",
        validation_alias=_env("ESI_LANG"),
        description="the operator console's language when the browser's Accept-Language names neither en nor ru",
    )

    # --- single sign-on for the console (OpenID Connect: docs/security.md) -----------------------------------------
    oidc_issuer: str | None = Field(
        None,
        validation_alias=_env("ESI_OIDC_ISSUER"),
        description="the OpenID Connect provider's issuer URL (discovery at <issuer>/.well-known/openid-configuration);"
        " set: people sign in to the console there",
    )
    oidc_client_id: str | None = Field(
        None, validation_alias=_env("ESI_OIDC_CLIENT_ID"), description="esi's client id at the provider"
    )
    oidc_client_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("ESI_OIDC_CLIENT_SECRET"),
        description="esi's client secret at the provider (unset: a public client, PKCE alone)",
    )
    oidc_redirect_url: str | None = Field(
        None,
        validation_alias=_env("ESI_OIDC_REDIRECT_URL"),
        description="the console's callback as registered at the provider: https://<esi>/console/auth/callback",
    )
    oidc_scopes: str = Field(
        "openid profile email",
        validation_alias=_env("ESI_OIDC_SCOPES"),
        description="the scopes asked of the provider, space-separated (openid among them)",
    )
    oidc_groups_claim: str = Field(
        "groups",
        validation_alias=_env("ESI_OIDC_GROUPS_CLAIM"),
        description="the claim that lists a person's groups (a dotted path reaches inside: realm_access.roles)",
    )
    oidc_user_claim: str = Field(
        "preferred_username",
        validation_alias=_env("ESI_OIDC_USER_CLAIM"),
        description="the claim that names a person (else sub); they act as sso:<name>",
    )
    oidc_roles: str | None = Field(
        None,
        validation_alias=_env("ESI_OIDC_ROLES"),
        description='groups → console scopes, JSON: {"esi-operators": ["operator"], "esi-viewers": ["read"]}',
    )
    oidc_ca_file: str | None = Field(
        None, validation_alias=_env("ESI_OIDC_CA_FILE"), description="CA bundle for HTTPS to the provider"
    )
    console_basic: Literal["on", "off"] | None = Field(
        None,
        validation_alias=_env("ESI_CONSOLE_BASIC"),
        description="whether the console accepts Basic and API keys besides single sign-on (unset: only without it)",
    )
    console_session_lifetime_s: float = Field(
        8 * 3600.0,
        validation_alias=_env("ESI_CONSOLE_SESSION_LIFETIME"),
        description="how long a console session lasts after its sign-in (8h, 30m, seconds)",
    )
    console_cookie_secure: bool = Field(
        True,
        validation_alias=_env("ESI_CONSOLE_COOKIE_SECURE"),
        description="the console's cookies are Secure (HTTPS only); false only for a demo over plain HTTP",
    )

    # --- TLS (HTTPS to each system: its own `<PREFIX>CA_BUNDLE`) ------------------------------------------------
    amqp_ca_file: str | None = Field(
        None, validation_alias=_env("ESI_AMQP_CA_FILE"), description="CA bundle for amqps:// to the broker"
    )
    amqp_cert_file: str | None = Field(
        None, validation_alias=_env("ESI_AMQP_CERT_FILE"), description="client certificate for amqps://"
    )
    amqp_key_file: str | None = Field(None, validation_alias=_env("ESI_AMQP_KEY_FILE"), description="its private key")
    tls_cert_file: str | None = Field(
        None, validation_alias=_env("ESI_TLS_CERT_FILE"), description="the API's certificate (HTTPS); unset: HTTP"
    )
    tls_key_file: str | None = Field(None, validation_alias=_env("ESI_TLS_KEY_FILE"), description="its private key")
    tls_client_ca_file: str | None = Field(
        None,
        validation_alias=_env("ESI_TLS_CLIENT_CA_FILE"),
        description="CA of the client certificates the API asks for (mutual TLS)",
    )

    # --- broker -------------------------------------------------------------------------------------------------
    amqp_url: SecretStr | None = Field(
        None,
        validation_alias=_env("ESI_AMQP_URL"),
        description="amqp:// or amqps:// URL of one node, or of several nodes of one cluster, comma-separated "
        "(same vhost and credentials); unset: built from RABBITMQ_*",
    )
    connect_timeout: float = Field(
        0.0,
        ge=0,
        validation_alias=_env("ESI_CONNECT_TIMEOUT"),
        description="seconds a process starting while no node answers waits for one (0: for ever)",
    )
    rabbitmq_host: str | None = Field(
        None, validation_alias=_env("RABBITMQ_HOST"), description="the broker's host when ESI_AMQP_URL is unset"
    )
    rabbitmq_port: int = Field(5672, validation_alias=_env("RABBITMQ_PORT"), description="its AMQP port")
    rabbitmq_username: str = Field(
        "guest", validation_alias=_env("RABBITMQ_USERNAME", "RABBITMQ_USER"), description="its user"
    )
    rabbitmq_password: SecretStr = Field(
        SecretStr("guest"), validation_alias=_env("RABBITMQ_PASSWORD"), description="that user's password"
    )
    prefetch: int = Field(
        200, ge=1, le=10_000, validation_alias=_env("ESI_PREFETCH"), description="deliveries in flight per consumer"
    )
    publish_timeout: float = Field(
        10.0, gt=0, validation_alias=_env("ESI_PUBLISH_TIMEOUT"), description="seconds to wait for a publish confirm"
    )
    delivery_limit: int = Field(
        20,
        ge=1,
        validation_alias=_env("ESI_DELIVERY_LIMIT"),
        description="redeliveries of a message before the quorum queue dead-letters it",
    )
    queue_max_length: int = Field(
        1_000_000, ge=1, validation_alias=_env("ESI_QUEUE_MAX_LENGTH"), description="messages a work queue holds"
    )

    # --- retries ------------------------------------------------------------------------------------------------
    retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_DELAYS),
        validation_alias=_env("ESI_RETRY_DELAYS"),
        description="JSON list of seconds between the attempts of a failed message",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=100,
        validation_alias=_env("ESI_MAX_ATTEMPTS"),
        description="attempts of a message before it goes to the dead letters",
    )

    # --- store --------------------------------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./var/esi.db",
        validation_alias=_env("ESI_DATABASE_URL"),
        description="the store: sqlite:///PATH (one replica) or postgresql://USER:PASSWORD@HOST/DB",
    )
    replicas: int = Field(
        1,
        ge=1,
        validation_alias=_env("ESI_REPLICAS"),
        description="processes of each service running against the store (the deployment's replicas); SQLite allows 1",
    )
    outbox_max_backlog: int = Field(
        100_000,
        ge=1,
        validation_alias=_env("ESI_OUTBOX_MAX_BACKLOG"),
        description="unpublished requests beyond which the API answers 503",
    )
    inbox_retention_s: float = Field(
        7 * 86400, gt=0, validation_alias=_env("ESI_INBOX_RETENTION"), description="seconds handled ids are kept"
    )
    prune_interval_s: float = Field(
        3600, gt=0, validation_alias=_env("ESI_PRUNE_INTERVAL"), description="seconds between inbox prunings"
    )
    request_retention_s: float = Field(
        30 * 86400,
        ge=0,
        validation_alias=_env("ESI_REQUEST_RETENTION"),
        description="requests in a final state (and their keys and timelines) older than this are deleted "
        "(30d, 12h, seconds); 0 or off: kept for ever",
    )
    retention_interval_s: float = Field(
        3600,
        gt=0,
        validation_alias=_env("ESI_RETENTION_INTERVAL"),
        description="how often the retention runs (a duration)",
    )

    # --- dead letters: the index's sweep and the replay/purge jobs ----------------------------------------------
    dlq_sweep_interval_s: float = Field(
        60,
        ge=0,
        validation_alias=_env("ESI_DLQ_SWEEP_INTERVAL"),
        description="how often the API service indexes dead letters that reached a DLQ without esi's index "
        "(a raw poison publish, an older esi); 0 or off: never",
    )
    dlq_sweep_max: int = Field(
        20_000,
        ge=1,
        validation_alias=_env("ESI_DLQ_SWEEP_MAX"),
        description="the most messages of one DLQ a sweep looks at (it holds them unacked while it looks)",
    )
    dlq_job_lease_s: float = Field(
        30,
        gt=0,
        validation_alias=_env("ESI_DLQ_JOB_LEASE"),
        description="how long a replay or purge job stays with the API process running it without news from it; "
        "after that, another (or the same, restarted) process resumes it (a duration)",
    )

    # --- HTTP API for 1C ----------------------------------------------------------------------------------------
    http_host: str = Field(
        "127.0.0.1",
        validation_alias=_env("ESI_HTTP_HOST"),
        description="the API's address (the image sets 0.0.0.0)",
    )
    max_wait_s: float = Field(
        30.0,
        ge=0,
        le=300,
        validation_alias=_env("ESI_MAX_WAIT"),
        description="the longest `GET /requests/{id}?wait=` may hold a request open, in seconds",
    )
    wait_recheck_s: float = Field(
        1.0,
        gt=0,
        le=60,
        validation_alias=_env("ESI_WAIT_RECHECK"),
        description="how often one query looks up the requests waited on that another process settled (on "
        "PostgreSQL the database announces them at once; this is the fallback)",
    )
    http_port: int = Field(5000, validation_alias=_env("ESI_HTTP_PORT", "FLASK_PORT"), description="the API's port")
    health_host: str = Field(
        "127.0.0.1",
        validation_alias=_env("ESI_HEALTH_HOST"),
        description="the adapters' /livez, /readyz and /metrics address (the image sets 0.0.0.0)",
    )
    health_port: int = Field(8080, validation_alias=_env("ESI_HEALTH_PORT"), description="their port")
    readiness_interval_s: float = Field(
        30.0,
        ge=0,
        validation_alias=_env("ESI_READINESS_INTERVAL"),
        description="how often each process runs its readiness checks for esi_dependency_ready besides every "
        "/readyz (a duration); 0: only then",
    )
    max_pdf_bytes: int = Field(
        10 * 1024 * 1024, ge=1, validation_alias=_env("ESI_MAX_PDF_BYTES"), description="the largest PDF accepted"
    )

    # --- the systems ------------------------------------------------------------------------------------------
    systems: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("ESI_SYSTEMS"),
        description="systems beyond the installed ones, as module:attribute of an esi.systems.spec.System "
        "(comma-separated); each reads its own settings",
    )
    subscriptions: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("ESI_SUBSCRIPTIONS"),
        description="the site's changes to who receives which event, comma-separated: `<subscriber>:<source>.<type>` "
        "adds a subscription, `-<subscriber>:<source>.<type>` removes a declared one "
        "(e.g. `1c:crm.contact_changed,-crm:dms.policy_changed`)",
    )

    # --- the fakes (esi run --with-fakes) ----------------------------------------------------------------------
    fake_host: str = Field(
        "127.0.0.1", validation_alias=_env("ESI_FAKE_HOST"), description="where the systems' fakes listen"
    )

    # --- the process -------------------------------------------------------------------------------------------
    gc_threshold: int = Field(
        20_000,
        ge=100,
        le=10_000_000,
        validation_alias=_env("ESI_GC_THRESHOLD"),
        description="net allocations of container objects between two young-generation collections of "
        "Python's garbage collector (Python's own default: 700); see docs/performance.md",
    )

    # --- logs ---------------------------------------------------------------------------------------------------
    log_level: str = Field("INFO", validation_alias=_env("ESI_LOG_LEVEL"), description="DEBUG, INFO, WARNING, ...")
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=_env("ESI_LOG_FORMAT"), description="json or text"
    )

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        urls = [u.strip() for u in value.get_secret_value().split(",") if u.strip()]
        if not urls:
            raise ValueError("names no node: give amqp://USER:PASSWORD@HOST:5672/VHOST (comma-separated for a cluster)")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
                raise ValueError(
                    f"{mask_url(url)!r} is not an AMQP URL: give amqp:// or amqps://USER:PASSWORD@HOST:PORT/VHOST"
                )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].split("+", 1)[0].lower() if "://" in value else ""
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                f"{mask_url(value)!r} is not a database URL esi uses: give sqlite:///PATH or "
                "postgresql://USER:PASSWORD@HOST:5432/DB"
            )
        return value

    @field_validator("replicas")
    @classmethod
    def _one_replica_on_sqlite(cls, value: int, info: ValidationInfo) -> int:
        # a field validator (database_url is validated before it), so that this problem is reported beside any other
        database_url = info.data.get("database_url")
        if value > 1 and isinstance(database_url, str) and database_url.lower().startswith("sqlite"):
            raise ValueError(
                f"{value} replicas on SQLite ({database_url}): SQLite is one process's file; "
                "use ESI_REPLICAS=1 or a PostgreSQL ESI_DATABASE_URL"
            )
        return value

    @field_validator("systems", "subscriptions", mode="before")
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

    @field_validator(
        "request_retention_s",
        "retention_interval_s",
        "readiness_interval_s",
        "console_session_lifetime_s",
        "dlq_sweep_interval_s",
        "dlq_job_lease_s",
        mode="before",
    )
    @classmethod
    def _parse_duration(cls, value: object, info: ValidationInfo) -> object:
        names = {
            "console_session_lifetime_s": "ESI_CONSOLE_SESSION_LIFETIME",
            "request_retention_s": "ESI_REQUEST_RETENTION",
            "retention_interval_s": "ESI_RETENTION_INTERVAL",
            "readiness_interval_s": "ESI_READINESS_INTERVAL",
            "dlq_sweep_interval_s": "ESI_DLQ_SWEEP_INTERVAL",
            "dlq_job_lease_s": "ESI_DLQ_JOB_LEASE",
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
        if self.console_basic == "off" and not self.oidc_issuer:
            raise ValueError("ESI_CONSOLE_BASIC=off needs single sign-on (ESI_OIDC_ISSUER): nobody could sign in")
        if self.oidc_issuer and self.console_session_lifetime_s < 60:
            raise ValueError("ESI_CONSOLE_SESSION_LIFETIME must be at least a minute")
        if self.env == "production" and self.oidc_issuer and not self.console_cookie_secure:
            raise ValueError("ESI_ENV=production refuses ESI_CONSOLE_COOKIE_SECURE=false: sessions go over HTTPS")
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
