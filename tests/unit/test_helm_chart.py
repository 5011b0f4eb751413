"""The Helm chart (deploy/helm/esi): helm lint and helm template of the default values and of every value set in ci/,
each rendered object against the Kubernetes schemas (kubernetes-validate; KEDA's and the Prometheus operator's
objects by hand), and what no schema says: probes on the right ports, each ScaledObject on the right queue over the
management API, every alert of deploy/prometheus/alerts.yml in the PrometheusRule, SQLite refused with replicas,
restricted containers, no secret inlined; the values table of the chart's README.md up to date."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
CHART = HELM_DIR / "esi"
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
INSTALL = "deploy/helm/install-helm.sh"

#: the oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest kubernetes-validate knows
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
#: custom resources, which kubernetes-validate has no schema for: apiVersion and the fields they need
CUSTOM = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
ADAPTERS = {"dms": "dms_queue", "crm": "crm_queue"}


def _helm() -> str:
    found = shutil.which("helm", path=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"helm is missing on CI: .ci/run installs it ({INSTALL})")
        pytest.skip(f"helm is not installed: {INSTALL} (puts it in .venv/bin/helm)")
    return found


def _helm_run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _set_args(sets: dict[str, str]) -> list[str]:
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


@cache
def _render(values: Path | None = None, sets: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Any], ...]:
    args = ["template", "esi", str(CHART), "--namespace", "esi"]
    if values is not None:
        args += ["-f", str(values)]
    args += _set_args(dict(sets))
    documents = yaml.safe_load_all(_helm_run(*args).stdout)
    return tuple(d for d in documents if d)


def render(values: Path | None = None, **sets: str) -> list[dict[str, Any]]:
    return list(_render(values, tuple(sorted(sets.items()))))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in of_kind(objects, kind)}


CASES = [pytest.param(None, id="default"), *(pytest.param(p, id=p.name) for p in VALUE_SETS)]


def test_the_value_sets_are_there() -> None:
    assert {p.name for p in VALUE_SETS} == {
        "minimal-values.yaml",
        "production-keda-values.yaml",
        "cluster-operator-values.yaml",
    }


@pytest.mark.parametrize("values", CASES)
def test_helm_lint(values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict"]
    if values is not None:
        args += ["-f", str(values)]
    _helm_run(*args)


# --- every object against its schema -----------------------------------------------------------------------------


def _check_custom(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    assert obj["apiVersion"] == CUSTOM[kind], f"{kind}: apiVersion {obj['apiVersion']}"
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    if kind == "ScaledObject":
        assert spec["scaleTargetRef"]["name"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA's metadata are strings"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    elif kind == "TriggerAuthentication":
        for ref in spec["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
    elif kind == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert all(endpoint["port"] for endpoint in spec["endpoints"])
    elif kind == "PrometheusRule":
        for group in spec["groups"]:
            assert group["name"]
            assert all(("alert" in rule or "record" in rule) and rule["expr"] for rule in group["rules"])


@pytest.mark.parametrize("values", CASES)
def test_every_object_is_valid(values: Path | None) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None and os.environ.get("CI"):
        pytest.fail('kubernetes-validate is missing on CI: pip install -e ".[dev]"')
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM:
            _check_custom(obj)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} on Kubernetes {version}: {exc.message}")


@pytest.mark.parametrize("values", CASES)
def test_labels(values: Path | None) -> None:
    for obj in render(values):
        labels = obj["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (obj["kind"], obj["metadata"]["name"], key)


# --- what a schema cannot say --------------------------------------------------------------------------------------


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


def _probe_port(container: dict[str, Any], probe: str) -> int:
    """The container port number a probe names (by name or number)."""
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize("values", CASES)
def test_probes_on_the_right_ports(values: Path | None) -> None:
    deployments = by_name(render(values), "Deployment")
    api = _container(deployments["esi-api"])
    assert api["args"] == ["run", "onec"]
    env = _env(api)
    assert env["ESI_HTTP_HOST"]["value"] == "0.0.0.0"  # noqa: S104 - the pod's address, not the host's
    http_port = int(env["ESI_HTTP_PORT"]["value"])
    assert http_port == 5000
    for code in ADAPTERS:
        adapter = _container(deployments[f"esi-{code}"])
        assert adapter["args"] == ["run", code]
        env = _env(adapter)
        assert env["ESI_HEALTH_HOST"]["value"] == "0.0.0.0"  # noqa: S104
        health_port = int(env["ESI_HEALTH_PORT"]["value"])
        for container, port in ((api, http_port), (adapter, health_port)):
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert container["startupProbe"]["httpGet"]["path"] == "/livez"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert _probe_port(container, probe) == port, (container["name"], probe)


@pytest.mark.parametrize("values", CASES)
def test_services_reach_the_probe_ports(values: Path | None) -> None:
    objects = render(values)
    services = by_name(objects, "Service")
    assert services["esi-api"]["spec"]["ports"][0]["targetPort"] == "http"
    for code in ADAPTERS:
        assert services[f"esi-{code}"]["spec"]["ports"][0]["targetPort"] == "health"
        assert services[f"esi-{code}"]["metadata"]["labels"]["esi-job"] == f"esi-{code}"
    assert services["esi-api"]["metadata"]["labels"]["esi-job"] == "esi-onec"


@pytest.mark.parametrize("values", CASES)
def test_graceful_stop(values: Path | None) -> None:
    for deployment in of_kind(render(values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        sleep = int(command[1])
        assert 1 <= sleep <= 15
        # the sleep, then esi's in-flight work (calls to the systems take up to their timeouts)
        assert pod["terminationGracePeriodSeconds"] >= sleep + 30


@pytest.mark.parametrize("values", CASES)
def test_restricted_security_context(values: Path | None) -> None:
    for deployment in of_kind(render(values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert not context["capabilities"].get("add")
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("values", CASES)
def test_no_secret_inlined(values: Path | None) -> None:
    objects = render(values)
    assert not of_kind(objects, "Secret"), "the chart renders no Secret: credentials are referenced"
    for deployment in of_kind(objects, "Deployment"):
        for name, entry in _env(_container(deployment)).items():
            if "value" in entry:
                value = str(entry["value"])
                assert "@" not in value, f"{name} holds credentials in plain text: {value}"
                assert not any(word in name for word in ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "CLIENTS_JSON"))
                assert name not in ("ESI_AMQP_URL", "CREATIO_USERNAME")
            else:
                assert set(entry["valueFrom"]) == {"secretKeyRef"}, name
        env = _env(_container(deployment))
        assert "valueFrom" in env.get("ESI_AMQP_URL", env.get("RABBITMQ_PASSWORD", {}))


def test_the_secrets_referenced() -> None:
    env = _env(_container(by_name(render(CHART / "ci" / "production-keda-values.yaml"), "Deployment")["esi-api"]))
    assert env["ESI_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "esi", "key": "amqp-url"}
    assert env["ESI_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "esi", "key": "database-url"}
    assert env["ESI_CLIENTS_JSON"]["valueFrom"]["secretKeyRef"] == {"name": "esi", "key": "clients-json"}
    crm = _env(_container(by_name(render(), "Deployment")["esi-crm"]))
    assert crm["CREATIO_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "esi", "key": "creatio-password"}
    operator = by_name(render(CHART / "ci" / "cluster-operator-values.yaml"), "Deployment")["esi-dms"]
    env = _env(_container(operator))
    assert "ESI_AMQP_URL" not in env
    assert env["RABBITMQ_HOST"]["value"] == "esi-rabbitmq.rabbitmq.svc"
    assert env["RABBITMQ_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "esi-rabbitmq-default-user"


@pytest.mark.parametrize("values", CASES)
def test_pdb_and_spread_per_service(values: Path | None) -> None:
    objects = render(values)
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
        assert any(b["spec"]["selector"]["matchLabels"] == selector for b in budgets), deployment["metadata"]["name"]
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)


def test_keda_scales_each_adapter_on_its_queue() -> None:
    objects = render(CHART / "ci" / "production-keda-values.yaml")
    scaled = by_name(objects, "ScaledObject")
    deployments = by_name(objects, "Deployment")
    (auth,) = of_kind(objects, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "esi-rabbitmq-management", "key": "host"}]
    assert set(scaled) == {f"esi-{code}" for code in ADAPTERS}
    for code, queue in ADAPTERS.items():
        spec = scaled[f"esi-{code}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"esi-{code}"
        assert spec["scaleTargetRef"]["name"] in deployments
        (trigger,) = spec["triggers"]
        assert trigger["metadata"]["protocol"] == "http"  # ready + unacknowledged: the management API's count
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["queueName"] == queue
        assert trigger["metadata"]["vhostName"] == "/"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert "host" not in trigger["metadata"], "the management URL carries credentials: only from the Secret"
        # KEDA owns the replicas: a rendered count would fight its HPA on every upgrade
        assert "replicas" not in deployments[f"esi-{code}"]["spec"]
        # above each replica's prefetch, or a busy replica's own unacked messages ask for another
        assert int(trigger["metadata"]["value"]) > 200
    assert deployments["esi-api"]["spec"]["replicas"] == 3
    assert scaled["esi-crm"]["spec"]["maxReplicaCount"] == 4  # the adapter's own keda map over the chart's


def test_keda_per_adapter_and_a_fourth_system() -> None:
    objects = render(
        None,
        **{
            "adapters.dms.keda.enabled": "true",
            "adapters.erp.enabled": "true",
            "adapters.erp.replicas": "2",
        },
    )
    deployments = by_name(objects, "Deployment")
    assert _container(deployments["esi-erp"])["args"] == ["run", "erp"]
    assert deployments["esi-erp"]["spec"]["replicas"] == 2
    assert "replicas" not in deployments["esi-dms"]["spec"]
    assert deployments["esi-crm"]["spec"]["replicas"] == 1
    assert set(by_name(objects, "ScaledObject")) == {"esi-dms"}
    assert "esi-erp" in by_name(objects, "Service")


def test_keda_off_by_default() -> None:
    objects = render()
    assert not of_kind(objects, "ScaledObject")
    assert not of_kind(objects, "TriggerAuthentication")
    assert not of_kind(objects, "NetworkPolicy")


def test_the_prometheus_rule_is_alerts_yml() -> None:
    objects = render(CHART / "ci" / "production-keda-values.yaml")
    (rule,) = of_kind(objects, "PrometheusRule")
    source = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == source["groups"]
    rendered = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
    wanted = {r["alert"] for group in source["groups"] for r in group["rules"] if "alert" in r}
    assert rendered == wanted
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_chart_links_alerts_yml() -> None:
    """One source: files/alerts.yml is a symbolic link to deploy/prometheus/alerts.yml (helm follows it)."""
    link = CHART / "files" / "alerts.yml"
    assert link.is_symlink(), "deploy/helm/esi/files/alerts.yml must stay a link (git config core.symlinks true)"
    assert link.resolve() == ALERTS.resolve()


def test_the_service_monitor_gives_the_jobs_alerts_expect() -> None:
    objects = render(CHART / "ci" / "production-keda-values.yaml")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "esi-job"
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"http", "health"}
    assert all(e["path"] == "/metrics" and e["honorLabels"] for e in monitor["spec"]["endpoints"])
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in of_kind(objects, "Service"):
        assert service["metadata"]["labels"].items() >= selector.items()
        assert service["metadata"]["labels"]["esi-job"].startswith("esi-")  # alerts.yml: up{job=~"esi-.+"}


def test_network_policies() -> None:
    objects = render(CHART / "ci" / "production-keda-values.yaml")
    policies = by_name(objects, "NetworkPolicy")
    assert set(policies) == {"esi-api", "esi-dms", "esi-crm"}
    assert policies["esi-api"]["spec"]["ingress"][0]["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert policies["esi-dms"]["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert "Egress" in policies["esi-dms"]["spec"]["policyTypes"]


# --- what the chart refuses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"database.url": "sqlite:////app/var/esi.db", "api.replicas": "2"}, "SQLite"),
        ({"database.url": "sqlite:////app/var/esi.db", "adapters.crm.replicas": "2"}, "SQLite"),
        ({"database.url": "sqlite:////app/var/esi.db", "keda.enabled": "true"}, "KEDA"),
        ({"database.url": "postgresql://esi:hunter2@pg:5432/esi"}, "password"),
        ({"rabbitmq.host": "rabbit", "secretKeys.amqpUrl": ""}, "credentialsSecret"),
    ],
)
def test_refused(sets: dict[str, str], message: str) -> None:
    result = _helm_run("template", "esi", str(CHART), *_set_args(sets), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_sqlite_with_one_replica_has_a_writable_var() -> None:
    objects = render(CHART / "ci" / "minimal-values.yaml")
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
        mounts = {m["mountPath"] for m in _container(deployment)["volumeMounts"]}
        assert "/app/var" in mounts
        assert _env(_container(deployment))["ESI_DATABASE_URL"]["value"] == "sqlite:////app/var/esi.db"


# --- values.yaml and its README -------------------------------------------------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_values_table", HELM_DIR / "gen_values_table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_value_has_a_comment() -> None:
    generator = _generator()
    assert generator.undocumented((CHART / "values.yaml").read_text(encoding="utf-8")) == []


def test_the_values_table_is_up_to_date() -> None:
    generator = _generator()
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert generator.render_readme(readme, text) == readme, "python deploy/helm/gen_values_table.py --write"
