"""The deployment files, checked as files: no Docker engine runs where the tests run.

- `docker-compose.yml` is validated against the Compose Specification's JSON schema, vendored beside this file as
  `compose-spec.json`: the file `schema/compose-spec.json` of github.com/compose-spec/compose-spec (Apache-2.0), taken
  byte for byte from the PyPI package check-jsonschema 0.39.0, which ships it as
  `check_jsonschema/builtin_schemas/vendor/compose-spec.json` (its sha256 is pinned below). The checks Compose makes
  beyond the schema (dependencies on defined services, healthcheck test forms) are made here by hand.
- `deploy/rabbitmq/definitions.json` must declare exactly what esi declares at start-up with its default settings:
  `esi.bus.definitions` records what `Topology.declare` declares against a recording channel, and
  `esi topology export --output deploy/rabbitmq/definitions.json` regenerates the file after a change of topology.
- `.env.example` must list every setting of `esi.config.Settings`, each with a comment.
- The Dockerfile: slim base, a non-root user, the HEALTHCHECK every compose service repeats.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from esi import runtime, tracing
from esi.bus.definitions import definitions, render
from esi.bus.topology import Topology, build_topology
from esi.cli import app as cli
from esi.cli.topology import EXPORT_COMMAND, definitions_text
from esi.config import Settings
from esi.systems.registry import load_registry
from esi.systems.spec import SystemSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
RABBITMQ_DIR = ROOT / "deploy" / "rabbitmq"
DEFINITIONS_FILE = RABBITMQ_DIR / "definitions.json"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

REGISTRY = load_registry()
ADAPTERS = REGISTRY.services  # onec, dms, crm: they consume the broker and use the store
FAKES = tuple(REGISTRY.fakes)  # fake-creatio, fake-dms: demo only
SERVICES = (*ADAPTERS, *FAKES)
#: every class of settings esi reads: the core's and each system's own (DMS_*, CREATIO_*)
SETTINGS_CLASSES: tuple[type[Settings] | type[SystemSettings], ...] = (
    Settings,
    *(s.settings for s in REGISTRY.systems if s.settings is not None),
)
SCALED_ADAPTERS = ("dms", "crm")  # onec publishes the API's port, so it is scaled behind a load balancer instead

# Variables esi services may be given that are not esi settings: name -> what reads them.
NOT_SETTINGS = {"ESI_HEALTH_URL": "the image's HEALTHCHECK"}
# Variables only docker-compose.yml reads (for ${...}), never esi.
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ERLANG_COOKIE"}
MONITORING = ("prometheus", "grafana")  # the compose profile `monitoring`
# Variables the OpenTelemetry SDK reads (esi.tracing), not esi's settings.
TRACING = set(tracing.VARIABLES)


# --- loading ---------------------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def setting_fields() -> dict[str, tuple[Any, str]]:
    """Every environment variable esi reads -> (the settings class, the field it sets)."""
    fields: dict[str, tuple[Any, str]] = {}
    for cls in SETTINGS_CLASSES:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            for choice in getattr(alias, "choices", None) or [alias or f"{prefix}{name}"]:
                fields.setdefault(str(choice).upper(), (cls, name))  # ESI_ENV: the core's
    return fields


def setting_aliases() -> dict[str, str]:
    """Every environment variable esi reads -> the field it sets."""
    return {env: name for env, (_, name) in setting_fields().items()}


def env_example_lines() -> list[tuple[int, str, str | None, bool]]:
    """(line number, text, variable name or None, commented out) for every non-blank line of .env.example."""
    lines = []
    for number, text in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", text)
        lines.append((number, text, match.group(2) if match else None, bool(match and match.group(1))))
    return lines


def env_example_values(*, commented: bool) -> dict[str, str]:
    values = {}
    for _, text, name, is_commented in env_example_lines():
        if name is not None and is_commented == commented:
            values[name] = text.split("=", 1)[1]
    return values


def esi_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: compose["services"][name] for name in SERVICES}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def interpolated_names(text: str) -> set[str]:
    """The variables a compose file interpolates: ${NAME}, ${NAME:-default}, ${NAME:?error}, $NAME (not $$NAME)."""
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def interpolation_default(value: str) -> str:
    """`${NAME:-default}` -> default (the value compose uses when NAME is unset); other text unchanged."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_healthcheck() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    checks = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, f"the Dockerfile needs exactly one HEALTHCHECK, found {len(checks)}"
    _, sep, command = checks[0].partition(" CMD ")
    if not sep and checks[0].startswith("CMD "):
        command = checks[0][4:]
    assert command, f"the HEALTHCHECK has no CMD: {checks[0]!r}"
    parsed = json.loads(command)  # exec form: no shell needed, so none is assumed
    assert isinstance(parsed, list)
    assert all(isinstance(part, str) for part in parsed)
    return parsed


# --- the broker definitions esi calls for ----------------------------------------------------------------------------


def default_topology() -> Topology:
    """The topology esi declares with its default settings (no environment, no .env)."""
    return runtime.topology_from(Settings.model_construct(), REGISTRY)


def _by_key(entries: list[dict[str, Any]], what: str) -> dict[str, str]:
    keyed: dict[str, str] = {}
    for entry in entries:
        if what == "bindings":
            key = f"{entry.get('source')} -> {entry.get('destination')} ({entry.get('routing_key')!r})"
        else:
            key = str(entry.get("name"))
        assert key not in keyed, f"{what}: {key} appears twice"
        # type-exact: 1000 and 1000.0 are different arguments to RabbitMQ
        keyed[key] = json.dumps(entry, sort_keys=True)
    return keyed


def definitions_differences(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = []
    for what in ("exchanges", "queues", "bindings"):
        have, want = _by_key(actual.get(what, []), what), _by_key(expected[what], what)
        problems += [f"{what}: missing {key}: {want[key]}" for key in sorted(want.keys() - have.keys())]
        problems += [f"{what}: not esi's {key}: {have[key]}" for key in sorted(have.keys() - want.keys())]
        problems += [
            f"{what}: {key} is {have[key]}, esi declares {want[key]}"
            for key in sorted(want.keys() & have.keys())
            if have[key] != want[key]
        ]
    for what in ("users", "permissions", "topic_permissions", "vhosts"):
        if actual.get(what, []) != expected[what]:
            problems.append(f"{what}: {actual.get(what)!r}, expected {expected[what]!r}")
    return problems


# --- (a) the Compose specification -----------------------------------------------------------------------------------


def test_vendored_schema_is_the_compose_specification() -> None:
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest == COMPOSE_SCHEMA_SHA256, "compose-spec.json was edited: vendor it again, and update the digest"
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]


def _compose_validator() -> Any:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_errors(document: dict[str, Any]) -> list[str]:
    errors = sorted(_compose_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    compose = load_compose()
    assert "version" not in compose, "the Compose specification has no top-level version: remove it"
    assert _schema_errors(compose) == []


@pytest.mark.parametrize(
    "mistake",
    [
        "unknown service attribute",
        "unknown depends_on condition",
        "replicas not a number",
        "unknown top-level key",
    ],
)
def test_schema_validation_catches_mistakes(mistake: str) -> None:
    """The schema check is strict (unknown attributes are refused), so a green check means something."""
    compose = copy.deepcopy(load_compose())
    if mistake == "unknown service attribute":
        compose["services"]["dms"]["healtcheck"] = compose["services"]["dms"].pop("healthcheck")
    elif mistake == "unknown depends_on condition":
        compose["services"]["crm"]["depends_on"]["rabbitmq"]["condition"] = "service_up"
    elif mistake == "replicas not a number":
        compose["services"]["dms"]["deploy"]["replicas"] = [3]
    else:
        compose["servicez"] = compose.pop("services")
    assert _schema_errors(compose) != []


def test_compose_checks_beyond_the_schema() -> None:
    """What `docker compose config` refuses although the schema allows it."""
    compose = load_compose()
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            if service.get("profiles") is None and services[dependency].get("profiles"):
                # without the profile the dependency is disabled, and Compose refuses a required one
                assert condition.get("required") is False, (
                    f"{name} runs without a profile but requires {dependency}, which only runs in a profile: "
                    "set required: false"
                )
        test = (service.get("healthcheck") or {}).get("test")
        if test is not None:
            assert isinstance(test, list), (
                f"{name}: healthcheck.test must be a list starting with CMD, CMD-SHELL or NONE"
            )
            assert test[0] in ("CMD", "CMD-SHELL", "NONE"), (
                f"{name}: healthcheck.test must be a list starting with CMD, CMD-SHELL or NONE"
            )
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} uses volume {source}, not declared under volumes:"
    text = COMPOSE_FILE.read_text(encoding="utf-8").replace("$$", "")
    for expression in re.findall(r"\$\{[^}]*\}", text):
        assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}]*)?\}", expression), (
            f"bad interpolation {expression}"
        )


def _docker_compose() -> list[str] | None:
    """The Compose v2 command on this machine (2.24 or later, for `env_file: required`), if there is one."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=60)
        version = re.match(r"v?(\d+)\.(\d+)", result.stdout.strip())
        if result.returncode == 0 and version and tuple(map(int, version.groups())) >= (2, 24):
            return command
    return None


@pytest.mark.parametrize("profile", [None, "demo", "monitoring"])
def test_docker_compose_accepts_the_file_where_installed(profile: str | None) -> None:
    """Where Docker Compose is installed, its own `config` (no engine needed) accepts the file with .env.example."""
    command = _docker_compose()
    if command is None:
        pytest.skip("Docker Compose 2.24+ is not installed here")
    profiles = ["--profile", profile] if profile else []
    result = subprocess.run(
        [
            *command,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(ENV_EXAMPLE),
            *profiles,
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# --- (b) services, healthchecks, dependencies, scaling, profiles -----------------------------------------------------


def test_every_esi_service_runs_the_one_image() -> None:
    compose = load_compose()
    for name, service in esi_services(compose).items():
        build = service.get("build")
        assert isinstance(build, dict), f"{name} must be built from ./Dockerfile"
        assert build.get("context") == ".", f"{name} must be built from ./Dockerfile"
        assert build.get("dockerfile") == "Dockerfile", f"{name} must be built from ./Dockerfile"
        assert service.get("command") == ["run", name], f"{name} must run `esi run {name}`"
    built = {name for name, service in compose["services"].items() if "build" in service}
    assert built == set(SERVICES), "only esi's services are built from the Dockerfile"


def _health_port(name: str, env: dict[str, str]) -> int:
    defaults = Settings.model_construct()
    if name == "onec":
        return int(env.get("ESI_HTTP_PORT") or env.get("FLASK_PORT") or defaults.http_port)
    if name in REGISTRY.fakes:
        config = REGISTRY.fakes[name].settings
        assert config is not None
        return int(env.get(config.env_name("fake_port")) or config.model_construct().fake_port)
    assert "ESI_HEALTH_PORT" in env, f"{name}: set ESI_HEALTH_PORT, the port of its /livez"
    return int(env["ESI_HEALTH_PORT"])


def test_every_esi_service_has_the_image_healthcheck_on_its_own_port() -> None:
    image_check = ["CMD", *dockerfile_healthcheck()]
    for name, service in esi_services(load_compose()).items():
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test") == image_check, f"{name}: the healthcheck must be the Dockerfile's"
        assert not healthcheck.get("disable")
        env = environment(service)
        assert "ESI_HEALTH_URL" in env, f"{name}: set ESI_HEALTH_URL to its own /livez"
        url = urlsplit(env["ESI_HEALTH_URL"])
        assert url.hostname == "127.0.0.1", f"{name}: the check runs inside the container"
        assert url.port == _health_port(name, env), f"{name}: ESI_HEALTH_URL is not on the port the service listens on"
        if name in ADAPTERS:
            assert url.path == "/livez", f"{name}: probe liveness at /livez (Kubernetes' name)"


async def test_health_urls_are_served() -> None:
    """The paths the compose healthchecks probe are served: the adapters' health port, and the fakes' own paths."""
    from esi.api.health import create_health_app

    services = esi_services(load_compose())
    apps = [
        (name, system.fake.app(system.settings.model_construct()))  # type: ignore[union-attr]
        for name, system in REGISTRY.fakes.items()
    ]
    apps += [(name, create_health_app(None)) for name in SCALED_ADAPTERS]
    for name, app in apps:
        path = urlsplit(environment(services[name])["ESI_HEALTH_URL"]).path
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake") as client:
            response = await client.get(path)
        assert response.status_code == 200, f"{name}: GET {path} answered {response.status_code}"


def test_adapters_wait_for_a_healthy_broker_and_store() -> None:
    compose = load_compose()
    services = compose["services"]
    for infrastructure in ("rabbitmq", "postgres"):
        assert (services[infrastructure].get("healthcheck") or {}).get("test"), f"{infrastructure} needs a healthcheck"
    assert services["rabbitmq-definitions"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    for name in ADAPTERS:
        depends_on = services[name].get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, condition in (
            ("rabbitmq", "service_healthy"),
            ("postgres", "service_healthy"),
            ("rabbitmq-definitions", "service_completed_successfully"),
        ):
            assert (depends_on.get(dependency) or {}).get("condition") == condition, (
                f"{name} must wait for {dependency} ({condition})"
            )


def test_adapters_can_run_as_several_replicas() -> None:
    services = esi_services(load_compose())
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a container_name allows one container only"
    for name in SCALED_ADAPTERS:
        service = services[name]
        assert not service.get("ports"), f"{name}: a fixed host port allows one replica only"
        replicas = (service.get("deploy") or {}).get("replicas")
        assert isinstance(replicas, int), f"{name}: set deploy.replicas"
        assert replicas >= 1, f"{name}: set deploy.replicas"


def test_the_fakes_run_only_in_the_demo_profile() -> None:
    compose = load_compose()
    for name, service in compose["services"].items():
        if name in FAKES:
            assert service.get("profiles") == ["demo"], f"{name} belongs to the demo profile"
        elif name in MONITORING:
            assert service.get("profiles") == ["monitoring"], f"{name} belongs to the monitoring profile"
        else:
            assert not service.get("profiles"), f"{name} must run without a profile"
    env = {name: environment(service) for name, service in esi_services(compose).items()}
    for name in ADAPTERS:
        # unless .env says otherwise, the adapters talk to the fakes, on the ports the fakes listen on
        for fake, system in REGISTRY.fakes.items():
            assert system.settings is not None
            url = urlsplit(interpolation_default(env[name][system.settings.env_name("url")]))
            assert (url.hostname, url.port) == (fake, _health_port(fake, env[fake])), f"{name}: {system.code}'s URL"
    for name in FAKES:
        assert env[name].get("ESI_FAKE_HOST") == "0.0.0.0", f"{name} must listen on every interface"  # noqa: S104 - the containers listen on every interface by design
    assert env["onec"].get("ESI_HTTP_HOST") == "0.0.0.0", "onec must listen on every interface"  # noqa: S104 - the containers listen on every interface by design


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_the_repository_files() -> None:
    services = load_compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert (ROOT / "deploy" / "prometheus" / "alerts.yml").exists()
    # every esi service is scraped, on the port its /metrics is served on
    env = {name: environment(service) for name, service in esi_services(load_compose()).items()}
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                scraped[host] = int(sd["port"])
        # the alert rules and the dashboard select esi's jobs as esi-<service>
        assert job["job_name"] in ("prometheus", f"esi-{scraped_hosts(job)[0]}"), job["job_name"]
    for name in ADAPTERS:
        assert scraped.get(name) == _health_port(name, env[name]), f"Prometheus does not scrape {name}'s /metrics"
    mounts = grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./deploy/grafana/esi.json:/var/lib/grafana/dashboards/esi.json:ro" in mounts
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/esi.yml").read_text(encoding="utf-8"))
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text("utf-8"))
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def scraped_hosts(job: dict[str, Any]) -> list[str]:
    hosts = [t.rsplit(":", 1)[0] for s in job.get("static_configs", []) for t in s["targets"]]
    return hosts + [h for sd in job.get("dns_sd_configs", []) for h in sd["names"]]


# --- (c) and (d) variables and .env.example --------------------------------------------------------------------------


def test_esi_services_are_given_only_variables_esi_knows() -> None:
    known = set(setting_aliases()) | set(NOT_SETTINGS)
    documented = {name for _, _, name, _ in env_example_lines() if name}
    for name, service in esi_services(load_compose()).items():
        unknown = sorted(set(environment(service)) - known)
        assert not unknown, f"{name} is given {unknown}: not settings of esi/config.py (a typo?)"
        undocumented = sorted(set(environment(service)) - set(setting_aliases()) - documented)
        assert not undocumented, f"{name} is given {undocumented}, which .env.example does not document"
    referenced = interpolated_names(COMPOSE_FILE.read_text(encoding="utf-8"))
    missing = sorted(referenced - documented)
    assert not missing, f"docker-compose.yml interpolates {missing}, which .env.example does not document"


def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = env_example_lines()
    listed = [name for _, _, name, _ in lines if name]
    missing = sorted(set(setting_aliases()) - set(listed))
    assert not missing, f".env.example does not list {missing}"
    assert len(listed) == len(set(listed)), "a variable is listed twice in .env.example"
    known = set(setting_aliases()) | set(NOT_SETTINGS) | COMPOSE_ONLY | TRACING
    stale = sorted(set(listed) - known)
    assert not stale, f".env.example lists {stale}: neither esi settings nor read by docker-compose.yml"
    for index, (number, text, name, _) in enumerate(lines):
        if name is None:
            assert text.startswith("#"), f".env.example line {number} is neither a comment nor NAME=value: {text!r}"
            continue
        previous = lines[index - 1] if index else None
        assert previous is not None, (
            f".env.example line {number} ({name}) needs a comment line of its own right above it"
        )
        assert previous[2] is None, (
            f".env.example line {number} ({name}) needs a comment line of its own right above it"
        )
        assert len(previous[1].lstrip("#").strip()) > 3, (
            f".env.example line {number} ({name}) needs a comment line of its own right above it"
        )


@pytest.fixture
def no_esi_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for alias in setting_aliases():
        monkeypatch.delenv(alias, raising=False)
        monkeypatch.delenv(alias.lower(), raising=False)


def _field_value(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@pytest.mark.usefixtures("no_esi_environment")
def test_env_example_shows_esi_defaults() -> None:
    """Each commented-out `# NAME=value` is what esi uses when NAME is unset."""
    fields = setting_fields()
    checked = set()
    for name, value in env_example_values(commented=True).items():
        if name not in fields:
            continue
        cls, field = fields[name]
        default = _field_value(getattr(cls.model_construct(), field))
        if value == "":
            assert default in (None, []), f".env.example shows {name} unset, but esi's default is {default!r}"
        else:
            parsed = _field_value(getattr(cls(_env_file=None, **{field: value}), field))
            assert parsed == default, f".env.example shows {name}={value}, but esi's default is {default!r}"
        checked.add(name)
    assert checked == set(fields) - set(env_example_values(commented=False)), "some settings show no default"


@pytest.mark.usefixtures("no_esi_environment")
def test_env_example_is_valid_for_esi() -> None:
    settings = Settings(_env_file=ENV_EXAMPLE)
    active = env_example_values(commented=False)
    assert settings.rabbitmq_username == active["RABBITMQ_USER"]
    for name in ("RABBITMQ_PASSWORD", "POSTGRES_PASSWORD"):
        # these go into URLs unquoted (docker-compose.yml), so the examples must be URL-safe
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", active[name]), f"{name} must be URL-safe"
    # what .env.example says of production is true
    assert "ESI_ENV=production refuses" in ENV_EXAMPLE.read_text(encoding="utf-8")
    from esi.systems.crm.settings import CreatioSettings

    with pytest.raises(ValueError, match="CREATIO_PASSWORD"):
        CreatioSettings(_env_file=None, ESI_ENV="production")


# --- (e) the RabbitMQ definitions ------------------------------------------------------------------------------------


def test_definitions_match_topology() -> None:
    text = DEFINITIONS_FILE.read_text(encoding="utf-8")
    problems = definitions_differences(json.loads(text), definitions(default_topology()))
    assert not problems, (
        f"deploy/rabbitmq/definitions.json disagrees with esi's topology (regenerate it: "
        f"{EXPORT_COMMAND}):\n" + "\n".join(problems)
    )
    # and byte for byte what the command writes: regenerating it leaves no diff
    assert text == definitions_text(), f"deploy/rabbitmq/definitions.json is out of date: run {EXPORT_COMMAND}"


def test_topology_export_prints_or_writes_the_definitions(tmp_path: Path) -> None:
    expected = render(definitions(default_topology()))
    assert EXPORT_COMMAND == "esi topology export --output deploy/rabbitmq/definitions.json"
    printed = CliRunner().invoke(cli, ["topology", "export"], catch_exceptions=False)
    assert printed.exit_code == 0
    assert printed.stdout == expected
    written = CliRunner().invoke(
        cli, ["topology", "export", "--output", str(tmp_path / "d.json")], catch_exceptions=False
    )
    assert written.exit_code == 0
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == expected


def test_definitions_comparison_notices_a_change() -> None:
    """The comparison is exact: another delivery limit, TTL type or binding is a difference."""
    topology = default_topology()
    expected = definitions(topology)
    assert definitions_differences(copy.deepcopy(expected), expected) == []
    assert definitions_differences(
        definitions(
            build_topology(
                REGISTRY.queues(),
                retry_delays=Settings.model_construct().retry_delays,
                delivery_limit=topology.delivery_limit + 1,
                max_length=topology.max_length,
            )
        ),
        expected,
    )
    retyped = copy.deepcopy(expected)
    ttl_queue = next(q for q in retyped["queues"] if "x-message-ttl" in q["arguments"])
    ttl_queue["arguments"]["x-message-ttl"] = float(ttl_queue["arguments"]["x-message-ttl"])
    assert definitions_differences(retyped, expected)
    unbound = copy.deepcopy(expected)
    unbound["bindings"].pop()
    assert definitions_differences(unbound, expected)


def test_definitions_declare_the_default_topology() -> None:
    """Spot checks of what the recording must hold, so that a broken recording cannot pass unnoticed."""
    document = definitions(default_topology())
    exchanges = {e["name"]: e for e in document["exchanges"]}
    queues = {q["name"]: q for q in document["queues"]}
    assert exchanges["main_exchange"]["type"] == "topic"
    assert exchanges["main_exchange"]["durable"] is True
    for queue in ("1c_queue", "dms_queue", "crm_queue"):
        assert exchanges[f"{queue}_dlx"]["type"] == "fanout"
        assert queues[queue]["arguments"]["x-queue-type"] == "quorum"
        assert queues[queue]["arguments"]["x-delivery-limit"] == 20
        assert queues[queue]["arguments"]["x-max-length"] == 1_000_000
        for delay in ("1s", "5s", "30s", "120s", "600s"):
            assert queues[f"{queue}.retry.{delay}"]["arguments"]["x-dead-letter-routing-key"] == queue
    for system in ("1c", "dms", "crm"):
        assert queues[f"{system}_dead_letter_queue"]["arguments"]["x-queue-type"] == "quorum"
    # every queue that holds a message is replicated (on min(3, nodes) nodes) and survives one node's loss
    assert all(
        q["arguments"]["x-queue-type"] == "quorum" and q["arguments"]["x-quorum-initial-group-size"] == 3
        for q in queues.values()
    )
    assert all(q["durable"] and not q["auto_delete"] for q in queues.values())
    keys = {(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]}
    assert ("main_exchange", "crm_queue", "*.response.crm.*") in keys
    assert ("dms_queue_dlx", "dms_dead_letter_queue", "") in keys


def test_rabbitmq_service_uses_the_definitions_and_creates_the_user() -> None:
    compose = load_compose()
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13-management")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbitmq["volumes"]}
    assert mounts["/etc/rabbitmq/rabbitmq.conf"] == "./deploy/rabbitmq/rabbitmq.conf"
    assert mounts["/etc/rabbitmq/enabled_plugins"] == "./deploy/rabbitmq/enabled_plugins"
    ports = {str(p).split(":")[-1] for p in rabbitmq["ports"]}
    assert {"5672", "15672"} <= ports
    env = environment(rabbitmq)
    assert "RABBITMQ_USER" in env["RABBITMQ_DEFAULT_USER"]
    assert "RABBITMQ_PASSWORD" in env["RABBITMQ_DEFAULT_PASS"]
    assert "rabbitmq_management" in (RABBITMQ_DIR / "enabled_plugins").read_text(encoding="utf-8")
    # a definitions import at boot would stop the broker from creating that user (see rabbitmq.conf)
    config_lines = [line.strip() for line in (RABBITMQ_DIR / "rabbitmq.conf").read_text(encoding="utf-8").splitlines()]
    assert not [line for line in config_lines if "load_definitions" in line and not line.startswith("#")]
    importer = compose["services"]["rabbitmq-definitions"]
    assert "./deploy/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in importer["volumes"]
    script = " ".join(importer["command"])
    assert "rabbitmqadmin" in script
    assert "import /etc/rabbitmq/definitions.json" in script
    # the esi services connect as that user
    for name in ADAPTERS:
        amqp = environment(compose["services"][name])["ESI_AMQP_URL"]
        assert amqp.startswith("amqp://${RABBITMQ_USER:-esi}:${RABBITMQ_PASSWORD")
        assert "@rabbitmq:5672/" in amqp
        assert "@postgres:5432/" in environment(compose["services"][name])["ESI_DATABASE_URL"]


# --- (f) the Dockerfile ----------------------------------------------------------------------------------------------


def test_dockerfile_slim_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    froms = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert froms, "no FROM"
    base = instructions[froms[-1]][1].split()[0]
    assert re.fullmatch(r"python:3\.1[1-9][0-9.]*-slim(-[a-z]+)?", base), f"the base must be a slim Python: {base}"
    users = [args for keyword, args in instructions[froms[-1] :] if keyword == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    command = dockerfile_healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "ESI_HEALTH_URL" in command[2]
    assert "urllib" in command[2]
    assert "curl" not in command[2], "the slim base has neither curl nor wget"
    assert "wget" not in command[2], "the slim base has neither curl nor wget"
    compile(command[2], "<HEALTHCHECK>", "exec")
    env_default = next(args for keyword, args in instructions if keyword == "ENV" and "ESI_HEALTH_URL=" in args)
    assert "'http://127.0.0.1:8080/livez'" in command[2]
    assert "ESI_HEALTH_URL=http://127.0.0.1:8080/livez" in env_default
    by_keyword = {keyword: args for keyword, args in instructions}
    assert json.loads(by_keyword["ENTRYPOINT"]) == ["esi"]
    assert json.loads(by_keyword["CMD"]) == ["run"]
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs), "the image installs the package: pip install ."


def test_dockerignore_keeps_local_state_out_but_the_package_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", ".git", "var", ".env"):
        assert required in patterns, f".dockerignore must exclude {required}"
    copied = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            copied.update(part for part in shlex.split(args)[:-1] if not part.startswith("--"))
    assert copied >= {"pyproject.toml", "README.md", "esi"}
    for path in copied:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"
        assert path not in patterns, f".dockerignore excludes {path}, which is copied"
        assert f"/{path}" not in patterns, f".dockerignore excludes {path}, which is copied"
