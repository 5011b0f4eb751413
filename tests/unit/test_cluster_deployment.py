"""The cluster profile (deploy/cluster/docker-compose.cluster.yml) as files: valid Compose, three clustered RabbitMQ
nodes, every esi process given every node, two API replicas behind the proxy, replicas of each adapter; and the
local cluster script."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from esi.config import Settings
from tests.unit.test_deployment import (
    COMPOSE_ONLY,
    NOT_SETTINGS,
    _docker_compose,
    _schema_errors,
    dockerfile_healthcheck,
    env_example_values,
    environment,
    interpolated_names,
    setting_aliases,
)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = ROOT / "deploy" / "cluster"
COMPOSE = CLUSTER_DIR / "docker-compose.cluster.yml"
NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")
ESI = ("onec", "dms", "crm", "fake-creatio", "fake-dms")


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_the_cluster_file_is_valid_compose_and_everything_is_in_the_cluster_profile() -> None:
    compose = load()
    assert _schema_errors(compose) == []
    for name, service in compose["services"].items():
        assert service.get("profiles") == ["cluster"], f"{name} belongs to the cluster profile"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"], f"{name} depends on undefined {dependency}"
            assert condition.get("condition") in ("service_healthy", "service_completed_successfully")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (CLUSTER_DIR / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    text = COMPOSE.read_text(encoding="utf-8").replace("$$", "")
    for expression in re.findall(r"\$\{[^}]*\}", text):
        assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}]*)?\}", expression), expression
    # every variable it reads is documented in .env.example
    documented = set(env_example_values(commented=True)) | set(env_example_values(commented=False))
    assert interpolated_names(text) <= documented | set(setting_aliases()), interpolated_names(text) - documented
    assert "ERLANG_COOKIE" in COMPOSE_ONLY


def test_three_rabbitmq_nodes_form_one_cluster_that_pauses_its_minority() -> None:
    services = load()["services"]
    conf = (CLUSTER_DIR / "rabbitmq.conf").read_text(encoding="utf-8")
    discovered = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", conf, re.M)
    assert sorted(discovered) == list(NODES)
    assert re.search(r"^cluster_partition_handling = pause_minority$", conf, re.M)
    for node in NODES:
        service = services[node]
        assert service["hostname"] == node  # the node name rabbit@<hostname> the others look for
        assert "./rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf:ro" in service["volumes"]
        assert any(v.endswith(":/var/lib/rabbitmq") for v in service["volumes"])
        assert "ERLANG_COOKIE" in service["environment"]
        assert ".erlang.cookie" in " ".join(service["entrypoint"])
    # the definitions (quorum queues) are imported once every node is up: their replicas go on three nodes
    definitions = services["rabbitmq-definitions"]
    assert set(definitions["depends_on"]) == set(NODES)
    assert "../rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in definitions["volumes"]


def test_every_esi_process_is_given_every_node_and_the_shared_store() -> None:
    services = load()["services"]
    known = set(setting_aliases()) | set(NOT_SETTINGS)
    image_check = ["CMD", *dockerfile_healthcheck()]
    for name in ESI:
        service = services[name]
        assert service["command"] == ["run", name]
        assert service["build"] == {"context": "../..", "dockerfile": "Dockerfile"}
        assert service["healthcheck"]["test"] == image_check
        env = environment(service)
        assert set(env) <= known, f"{name}: {set(env) - known} are not esi settings"
        if name.startswith("fake-"):
            continue
        urls = re.sub(r"\$\{[^}]*\}", "x", env["ESI_AMQP_URL"]).split(",")  # the interpolations as plain text
        assert [urlsplit(u).hostname for u in urls] == list(NODES)
        assert env["ESI_DATABASE_URL"].startswith("postgresql://")
        parsed = Settings(_env_file=None, ESI_AMQP_URL="amqp://u:p@rabbitmq1:5672/,amqp://u:p@rabbitmq2:5672/")
        assert len(parsed.broker_urls()) == 2


def test_two_api_replicas_behind_one_proxy_and_replicas_of_each_adapter() -> None:
    services = load()["services"]
    onec = services["onec"]
    assert onec["deploy"]["replicas"] >= 2, "API replicas: no host port of their own"
    assert not onec.get("ports"), "API replicas: no host port of their own"
    api = services["api"]
    assert api["ports"] == ["5000:5000"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in api["volumes"]
    nginx = (CLUSTER_DIR / "nginx.conf").read_text(encoding="utf-8")
    assert re.search(r"server onec:5000\b", nginx)
    assert "listen 5000;" in nginx
    assert "proxy_pass http://esi_api;" in nginx
    # a long poll must not be cut by the proxy before esi answers it
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", nginx).group(1))  # type: ignore[union-attr]
    assert read_timeout > Settings.model_construct().max_wait_s
    for adapter in ("dms", "crm"):
        service = services[adapter]
        assert service["deploy"]["replicas"] >= 2
        assert not service.get("ports")


def test_docker_compose_accepts_the_cluster_file_where_installed() -> None:
    command = _docker_compose()
    if command is None:
        pytest.skip("Docker Compose 2.24+ is not installed here")
    result = subprocess.run(
        [
            *command,
            "-f",
            str(COMPOSE),
            "--env-file",
            str(ROOT / ".env.example"),
            "--profile",
            "cluster",
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"ERLANG_COOKIE": "x" * 20, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


def test_the_local_cluster_script_is_valid_shell_and_leaves_the_main_broker_alone() -> None:
    script = CLUSTER_DIR / "local.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert 'echo "n$1@localhost"' in text
    assert "568$i" in text
    assert "5672" not in text.replace("on 5672", "")
    usage = subprocess.run([str(script), "urls", "vh"], capture_output=True, text=True)
    assert usage.stdout.strip() == ",".join(f"amqp://guest:guest@127.0.0.1:568{i}/vh" for i in (1, 2, 3))


ADVANCED = ROOT / "deploy" / "rabbitmq" / "advanced.config"


def configured_confirm_timeout() -> int | None:
    """The dead-letter worker's confirm timeout (ms) deploy/rabbitmq/advanced.config sets; None if it sets none."""
    match = re.search(
        r"^\s*\{dead_letter_worker_publisher_confirm_timeout,\s*(\d+)\}", ADVANCED.read_text(encoding="utf-8"), re.M
    )
    return int(match.group(1)) if match else None


def test_every_broker_republishes_a_dead_letter_whose_confirm_was_lost_within_the_publish_timeout() -> None:
    """A quorum queue's at-least-once dead-letter worker (esi's retries go back to their work queue through it) waits
    `dead_letter_worker_publisher_confirm_timeout` for a confirm lost with the target's leader: 180 s by default.
    Every broker esi ships gets deploy/rabbitmq/advanced.config, which makes it the publish timeout's 10 s."""
    timeout = configured_confirm_timeout()
    assert timeout is not None, "advanced.config sets the dead-letter worker's confirm timeout"
    assert timeout <= Settings.model_construct().publish_timeout * 1000
    if shutil.which("erl"):  # RabbitMQ reads it as Erlang terms: a syntax error would stop the node at boot
        result = subprocess.run(
            ["erl", "-noshell", "-eval", f'{{ok, [_]}} = file:consult("{ADVANCED}"), halt().'],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]["rabbitmq"]
    assert "./deploy/rabbitmq/advanced.config:/etc/rabbitmq/advanced.config:ro" in single["volumes"]
    for node in NODES:
        assert "../rabbitmq/advanced.config:/etc/rabbitmq/advanced.config:ro" in load()["services"][node]["volumes"]
    # the local cluster's nodes read it at each start, and `up` applies it to nodes already running
    script = (CLUSTER_DIR / "local.sh").read_text(encoding="utf-8")
    assert '/../rabbitmq" && pwd)/advanced.config"' in script
    assert "RABBITMQ_ADVANCED_CONFIG_FILE" in script
    assert 'if running "$i"; then apply_advanced_config "$i"' in script
