"""`esi config check` (the whole environment, validated and shown with its sources) and `esi config docs` (the
configuration reference, docs/configuration.md, generated from the settings classes)."""

from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from esi.config import (
    DEFAULT_SECRETS_DIR,
    Settings,
    collect_problems,
    env_names,
    mask_url,
    sources_of,
)

config_app = typer.Typer(no_args_is_help=True, help="the settings: check the environment, write the reference")

#: what a secret is shown as
MASK = "********"
#: the committed reference, relative to the repository's root
DOCS_FILE = Path("docs/configuration.md")
REGENERATE = f"esi config docs --output {DOCS_FILE}"


@dataclass(frozen=True)
class Section:
    """One settings class: esi's own, or a system's."""

    title: str
    cls: type[BaseSettings]


@dataclass(frozen=True)
class Problem:
    variable: str
    message: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


def sections(systems: list[str] | None = None) -> list[Section]:
    """esi's settings, then each registered system's (the installed ones and `systems`, as `ESI_SYSTEMS`)."""
    from esi.runtime import registry_from

    registry = registry_from(Settings.model_construct(systems=list(systems or [])))
    found = [Section("esi", Settings)]
    found += [Section(s.code, s.settings) for s in registry.systems if s.settings is not None]
    return found


# --- values as shown -----------------------------------------------------------------------------------------------


def _is_secret(cls: type[BaseSettings], field_name: str) -> bool:
    annotation = cls.model_fields[field_name].annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def show(value: object, *, secret: bool = False) -> str:
    """A value as `esi config check` and the reference show it: secrets masked (a URL keeps all but its
    password), passwords in URLs masked, lists as JSON."""
    if isinstance(value, SecretStr):
        value, secret = value.get_secret_value(), True
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return json.dumps(value)
    text = str(value)
    if secret:
        return mask_url(text) if "://" in text else MASK
    return mask_url(text) if "://" in text else text


def _variable(cls: type[BaseSettings], field_name: str, source: str) -> str:
    """The variable a field was set by (the one named in its source), else its preferred name."""
    names = env_names(cls, field_name)
    return next((name for name in names if f" {name}" in f" {source}".replace("(", " ")), names[0])


# --- esi config check ----------------------------------------------------------------------------------------------


def _extra_systems() -> list[str]:
    """`ESI_SYSTEMS`, also when other settings are invalid (their problems are reported by the check)."""
    with collect_problems():
        try:
            return Settings().systems
        except ValidationError:
            pass
    raw = os.environ.get("ESI_SYSTEMS", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def _validation_problems(cls: type[BaseSettings], error: ValidationError) -> list[Problem]:
    keys: dict[str, str] = {}
    for name in cls.model_fields:
        keys[name] = name
        for alias in env_names(cls, name):
            keys[alias.upper()] = name
    problems = []
    for detail in error.errors():
        message = str(detail["msg"]).removeprefix("Value error, ")
        loc = detail["loc"]
        if not loc:  # the model's own check (ESI_ENV=production with ESI_AUTH=off)
            problems.append(Problem(cls.__name__, message))
            continue
        key = str(loc[0])
        field_name = keys.get(key.upper()) or keys.get(key)
        if field_name is None:  # a file source's problem: its key is the variable (DMS_API_KEY_FILE)
            problems.append(Problem(key, message))
            continue
        variable = env_names(cls, field_name)[0]
        value = show(detail.get("input"), secret=_is_secret(cls, field_name))
        problems.append(Problem(f"{variable}={value}", message))
    return problems


def _load(cls: type[BaseSettings]) -> tuple[BaseSettings | None, list[Problem]]:
    """The settings, and every problem found in one pass: the files that cannot be read and the invalid values."""
    with collect_problems() as unreadable:
        try:
            loaded: BaseSettings | None = cls()
            problems: list[Problem] = []
        except ValidationError as exc:
            loaded, problems = None, _validation_problems(cls, exc)
    if isinstance(loaded, Settings):
        from esi.runtime.services import SettingsError, oidc_from

        try:  # the console's single sign-on: its settings are checked together, as `esi run` does
            oidc_from(loaded)
        except SettingsError as exc:
            problems.append(Problem("ESI_OIDC_*", str(exc)))
    return loaded, [Problem(p.variable, p.message) for p in unreadable] + problems


def _effective(section: Section, settings: BaseSettings) -> list[str]:
    cls = section.cls
    sources = sources_of(cls)
    rows = []
    for field_name in cls.model_fields:
        source = sources[field_name]
        rows.append(
            (
                _variable(cls, field_name, source),
                show(getattr(settings, field_name), secret=_is_secret(cls, field_name)),
                source,
            )
        )
    width = max(len(variable) for variable, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    return [f"  {variable:<{width}}  {value:<{value_width}}  {source}" for variable, value, source in rows]


@config_app.command("check")
def check() -> None:
    """Validate every setting (esi's and each registered system's); print them, secrets masked, with where each
    came from (default, environment variable, .env, NAME_FILE, the secrets directory); exit 1 naming every
    problem."""
    try:
        found = sections(_extra_systems())
    except Exception as exc:  # noqa: BLE001 - a system that cannot be loaded is one more problem to name
        typer.echo(f"esi: ESI_SYSTEMS / the installed systems cannot be loaded: {exc}", err=True)
        raise typer.Exit(1) from None
    problems: list[tuple[str, Problem]] = []
    for section in found:
        settings, section_problems = _load(section.cls)
        problems += [(section.title, p) for p in section_problems]
        if settings is not None:
            typer.echo(f"{section.title} ({section.cls.__module__}.{section.cls.__name__})")
            typer.echo("\n".join(_effective(section, settings)))
        else:
            typer.echo(f"{section.title} ({section.cls.__module__}.{section.cls.__name__}): invalid, see below")
    if problems:
        typer.echo(f"esi: {len(problems)} problem(s) in the settings:", err=True)
        for title, problem in problems:
            typer.echo(f"  [{title}] {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"settings OK ({len(found)} sections)")


# --- esi config docs -----------------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [_type_name(a) for a in args if a is not type(None)]
        optional = len(kinds) < len(args)
        return " | ".join(kinds) + (" (optional)" if optional else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is SecretStr:
        return "secret"
    return {str: "text", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _default(cls: type[BaseSettings], field_name: str) -> str:
    info = cls.model_fields[field_name]
    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else f"`{show(value, secret=_is_secret(cls, field_name))}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_docs(found: list[Section] | None = None) -> str:
    """docs/configuration.md: every variable of esi's settings and of each registered system's, with its type,
    default (secrets masked) and description."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- generated by `{REGENERATE}` from the settings classes; do not edit by hand -->",
        "",
        "Every setting is an environment variable (case-insensitive names). A setting `NAME` is read, first "
        "found first:",
        "",
        "1. from the environment variable `NAME`;",
        "2. from the file the variable `NAME_FILE` names (systemd's `LoadCredential=`, mounted Kubernetes "
        "secrets): a missing file is an error naming `NAME_FILE`, and so is setting both `NAME` and `NAME_FILE`;",
        "3. from `NAME` in `.env` (in the working directory);",
        f"4. from a file `NAME` in the secrets directory: `ESI_SECRETS_DIR`, else `{DEFAULT_SECRETS_DIR}` when it "
        "exists (Docker's and Compose's secrets);",
        "5. else the default below.",
        "",
        "One trailing newline of a file is not part of the value. `esi config check` validates the whole "
        "environment and prints the effective settings with their sources, secrets masked.",
        "",
    ]
    #: a system's field read from one of esi's own variables (ESI_ENV)
    shared = {name for field in Settings.model_fields for name in env_names(Settings, field)}
    for section in found if found is not None else sections():
        cls = section.cls
        title = "esi" if section.title == "esi" else f"the {section.title} system"
        lines += [
            f"## {title} (`{cls.__module__}.{cls.__name__}`)",
            "",
            "| Variable | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        for field_name, info in cls.model_fields.items():
            names = env_names(cls, field_name)
            variable = " or ".join(f"`{n}`" for n in names)
            description = info.description or ("the same variable as esi's, above" if names[0] in shared else "")
            lines.append(
                f"| {variable} | {_cell(_type_name(info.annotation))} | {_cell(_default(cls, field_name))} "
                f"| {_cell(description)} |"
            )
        lines.append("")
    return "\n".join(lines)


@config_app.command("docs")
def docs(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here (default: print)")] = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 when OUTPUT differs from the generated text")] = False,
) -> None:
    """The configuration reference (docs/configuration.md), generated from the settings classes."""
    text = render_docs()
    if output is None:
        typer.echo(text, nl=False)
        return
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            typer.echo(f"esi: {output} is out of date: run `esi config docs --output {output}`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is up to date")
        return
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")
