"""AMQPS against a real RabbitMQ: a second, throwaway node with a TLS listener and certificates made for the test.

The node runs next to the local `rabbit@localhost` on its own node name, ports, data, log and PID file, and the same
Erlang cookie (the `rabbitmq` user's home, which `rabbitmq-server`/`rabbitmqctl` run under when started by root),
with no plugins. It is stopped in the fixture's teardown, whatever happened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from esi.bus.connection import BrokerUnavailable, Bus
from esi.bus.topology import build_topology
from esi.messages import Envelope, Kind
from esi.security.tls import amqp_ssl_context, amqp_ssl_context_for_url, http_verify, uvicorn_ssl_kwargs
from esi.systems.registry import load_registry
from esi.testing import free_port

pytestmark = pytest.mark.integration

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

START_TIMEOUT = 45


# --- certificates ---------------------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "esi tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    server: bool,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(
    directory: Path, *, server_dns: tuple[str, ...] = ("localhost",), server_ips: tuple[str, ...] = ("127.0.0.1", "::1")
) -> Pki:
    ca, ca_key = make_ca("esi test CA")
    server, server_key = make_leaf(ca, ca_key, "localhost", server=True, dns=server_dns, ips=server_ips)
    client, client_key = make_leaf(ca, ca_key, "esi-test-client", server=False)
    other, _ = make_ca("some other CA")
    pki = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )
    _write_cert(ca, pki.ca)
    _write_cert(server, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(client, pki.client_cert)
    _write_key(client_key, pki.client_key)
    _write_cert(other, pki.other_ca)
    return pki


# --- a second RabbitMQ node -----------------------------------------------------------------------------------------


def _ctl_env() -> dict[str, str]:
    # the CLI derives its own distribution ports from RABBITMQ_* variables: give it none of the extra node's
    return {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}


def _ctl(node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-n", node, *args], capture_output=True, text=True, timeout=timeout, env=_ctl_env()
    )


@dataclass
class TlsNode:
    name: str
    base: Path
    tls_port: int
    tcp_port: int
    dist_port: int
    pki: Pki

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbit.pid"

    def url(self, host: str = "localhost") -> str:
        return f"amqps://guest:guest@{host}:{self.tls_port}/"

    def env(self) -> dict[str, str]:
        env = _ctl_env()
        env.update(
            {
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.tcp_port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            }
        )
        return env

    def write_config(self) -> None:
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.tcp_port}\n"
            f"listeners.ssl.local = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.pki.ca}\n"
            f"ssl_options.certfile = {self.pki.server_cert}\n"
            f"ssl_options.keyfile = {self.pki.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            "ssl_options.versions.1 = tlsv1.3\n"
            "ssl_options.versions.2 = tlsv1.2\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    def logs(self) -> str:
        text = [
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted((self.base / "log").glob("*"))
            if path.is_file()
        ]
        return "\n".join(text)

    def start(self) -> None:
        result = subprocess.run(
            ["rabbitmq-server", "-detached"], env=self.env(), capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmq-server -detached failed ({result.returncode}): {result.stderr or result.stdout}"
            )
        # `-detached` returns before the node is up: `wait` follows the PID file until the node answers,
        # `await_startup` until the broker inside it has booted
        waited = _ctl(
            self.name, "wait", str(self.pid_file), "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 15
        )
        if waited.returncode == 0:
            waited = _ctl(self.name, "await_startup", "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 15)
        if waited.returncode != 0:
            raise RuntimeError(f"node {self.name} did not start: {waited.stderr or waited.stdout}\n{self.logs()}")

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        # with the PID file, `stop` returns only once the node's OS process has exited
        _ctl(self.name, "stop", *([str(self.pid_file)] if pid is not None else []), timeout=60)
        if pid is not None and _alive(pid):
            # `stop` did not take (the node never came up properly): end this node's own process, by its id
            os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _node_prerequisites() -> str | None:
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        return "rabbitmq-server/rabbitmqctl are not installed"
    try:
        pwd.getpwnam("rabbitmq")
    except KeyError:
        return "there is no rabbitmq user to run the extra node as"
    if os.geteuid() != 0:
        return "starting an extra RabbitMQ node needs root (the scripts switch to the rabbitmq user and its cookie)"
    return None


@pytest.fixture(scope="module")
def tls_node() -> Iterator[TlsNode]:
    reason = _node_prerequisites()
    if reason is not None:
        pytest.skip(reason)
    # not under pytest's tmp_path: its parents are private to root, and the node runs as the rabbitmq user
    base = Path(tempfile.mkdtemp(prefix="esi-tls-node-"))
    rabbitmq = pwd.getpwnam("rabbitmq")
    node = None
    try:
        certs = base / "certs"
        certs.mkdir()
        pki = make_pki(certs)
        node = TlsNode(
            name=f"esi-tls-{uuid.uuid4().hex[:8]}@localhost",
            base=base,
            tls_port=free_port(),
            tcp_port=free_port(),
            dist_port=free_port(),
            pki=pki,
        )
        node.write_config()
        for path in [base, *base.rglob("*")]:
            os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)
        base.chmod(0o700)
        for key in (pki.server_key, pki.client_key):
            key.chmod(0o600)
        node.start()
        yield node
    finally:
        try:
            if node is not None:
                node.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


# --- the tests ------------------------------------------------------------------------------------------------------


async def _publish_once(bus: Bus) -> None:
    envelope = Envelope(
        request_id=f"tls-{uuid.uuid4().hex[:8]}",
        source_system="1c",
        target_system="dms",
        message_type="create_user",
        payload={"user_id": "U1", "name": "Иван", "email": "i@example.com"},
    )
    await bus.publisher.publish(envelope, envelope.routing_key(Kind.REQUEST))


async def test_bus_opens_over_amqps_with_the_ca_and_publishes(tls_node: TlsNode) -> None:
    context = amqp_ssl_context(ca_file=str(tls_node.pki.ca))
    bus = await asyncio.wait_for(
        Bus.open(tls_node.url(), topology=build_topology(load_registry().queues()), ssl_context=context), 20
    )
    try:
        assert bus.connected
        await _publish_once(bus)
        queue = await bus.consume_channel.get_queue("dms_queue", ensure=False)
        message = await queue.get(timeout=5, fail=False)
        assert message is not None
        assert "Иван" in message.body.decode("utf-8")
        await message.ack()
    finally:
        await bus.aclose()


async def test_a_client_certificate_is_presented_to_the_broker(tls_node: TlsNode) -> None:
    context = amqp_ssl_context(
        ca_file=str(tls_node.pki.ca), cert_file=str(tls_node.pki.client_cert), key_file=str(tls_node.pki.client_key)
    )
    bus = await asyncio.wait_for(
        Bus.open(
            tls_node.url(),
            topology=build_topology(load_registry().queues()),
            ssl_context=context,
            name="esi-with-client-cert",
        ),
        20,
    )
    try:
        await _publish_once(bus)
        listed = await asyncio.to_thread(
            _ctl,
            tls_node.name,
            "list_connections",
            "client_properties",
            "ssl",
            "peer_cert_subject",
            "--no-table-headers",
        )
        assert listed.returncode == 0, listed.stderr
        lines = [line for line in listed.stdout.splitlines() if "esi-with-client-cert" in line]
        assert lines, listed.stdout
        line = lines[0]
        assert "true" in line
        assert "CN=esi-test-client" in line
    finally:
        await bus.aclose()


async def test_a_broker_signed_by_another_ca_is_refused(tls_node: TlsNode) -> None:
    context = amqp_ssl_context(ca_file=str(tls_node.pki.other_ca))
    with pytest.raises(BrokerUnavailable) as caught:
        await asyncio.wait_for(
            Bus.open(tls_node.url(), topology=build_topology(load_registry().queues()), ssl_context=context), 20
        )
    assert "certificate verify failed" in str(caught.value)


async def test_the_system_trust_store_does_not_trust_a_private_ca(tls_node: TlsNode) -> None:
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(
            Bus.open(
                tls_node.url(),
                topology=build_topology(load_registry().queues()),
                ssl_context=amqp_ssl_context(ca_file=None),
            ),
            20,
        )


async def test_a_url_with_no_verify_ssl_is_refused_rather_than_obeyed(tls_node: TlsNode) -> None:
    with pytest.raises(ValueError, match="no_verify_ssl"):
        amqp_ssl_context_for_url(tls_node.url() + "?no_verify_ssl=1", ca_file=str(tls_node.pki.ca))
    context = amqp_ssl_context_for_url(tls_node.url(), ca_file=str(tls_node.pki.ca))
    bus = await asyncio.wait_for(
        Bus.open(tls_node.url(), topology=build_topology(load_registry().queues()), ssl_context=context), 20
    )
    await bus.aclose()


# --- the contexts themselves, against a plain TLS server (no broker needed) ----------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def _connect(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=host)
        writer.close()
    finally:
        srv.close()


async def test_contexts_check_the_host_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, server_dns=("esi-broker.internal",), server_ips=())
    server = _server_context(pki.server_cert, pki.server_key)
    await _connect(amqp_ssl_context(ca_file=str(pki.ca)), server, "esi-broker.internal")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        await _connect(amqp_ssl_context(ca_file=str(pki.ca)), server, "other-host.internal")
    verify = http_verify(str(pki.ca))
    assert isinstance(verify, ssl.SSLContext)
    await _connect(verify, server, "esi-broker.internal")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _connect(verify, server, "other-host.internal")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _connect(http_verify(str(pki.other_ca)), server, "esi-broker.internal")


def test_context_settings_and_refusals(pki: Pki) -> None:
    context = amqp_ssl_context(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="without its certificate"):
        amqp_ssl_context(ca_file=str(pki.ca), key_file=str(pki.client_key))
    with pytest.raises(ValueError, match="does not exist"):
        amqp_ssl_context(ca_file=str(pki.ca) + ".missing")
    with pytest.raises(ValueError, match="certificate"):
        amqp_ssl_context(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.server_key))
    assert amqp_ssl_context_for_url("amqp://guest:guest@localhost:5672/") is None
    with pytest.raises(ValueError, match="not encrypted"):
        amqp_ssl_context_for_url("amqp://localhost/", ca_file=str(pki.ca))
    assert isinstance(amqp_ssl_context_for_url("amqps://localhost/", ca_file=str(pki.ca)), ssl.SSLContext)

    assert http_verify(None) is True
    for off in ("false", "0", "off"):
        with pytest.raises(ValueError, match="cannot be turned off"):
            http_verify(off)

    assert uvicorn_ssl_kwargs(None, None) == {}
    kwargs = uvicorn_ssl_kwargs(str(pki.server_cert), str(pki.server_key))
    assert kwargs == {"ssl_certfile": str(pki.server_cert), "ssl_keyfile": str(pki.server_key)}
    with pytest.raises(ValueError, match="both"):
        uvicorn_ssl_kwargs(str(pki.server_cert), None)
    with pytest.raises(ValueError, match="cannot load"):
        uvicorn_ssl_kwargs(str(pki.server_cert), str(pki.client_key))
    mutual = uvicorn_ssl_kwargs(str(pki.server_cert), str(pki.server_key), client_ca_file=str(pki.ca))
    assert mutual["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert mutual["ssl_ca_certs"] == str(pki.ca)
