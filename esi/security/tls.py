"""TLS for esi's three edges: AMQPS to RabbitMQ, HTTPS to Creatio and the DMS (httpx), HTTPS for 1C (uvicorn).

Verification is always on. Nothing here can turn it off: a private CA is trusted by naming its file, never by
skipping the check — neither globally nor per connection.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["amqp_ssl_context", "amqp_ssl_context_for_url", "http_verify", "uvicorn_ssl_kwargs"]

#: TLS 1.0 and 1.1 are deprecated (RFC 8996); RabbitMQ 3.10 and every current server speak 1.2 and 1.3
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _readable(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path!r} is not readable by this process")
    return path


def _client_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that checks the server's chain and host name, trusting `ca_file` (or the system's CAs)."""
    if ca_file is not None and os.path.isdir(ca_file):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=ca_file)
    else:
        cafile = _readable(ca_file, "CA file") if ca_file is not None else None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        except ssl.SSLError as exc:
            raise ValueError(f"CA file {ca_file!r} holds no usable PEM certificate: {exc}") from exc
    context.minimum_version = MINIMUM_VERSION
    # create_default_context sets both; stated here so that no later edit weakens them unnoticed
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def amqp_ssl_context(
    *, ca_file: str | None, cert_file: str | None = None, key_file: str | None = None, key_password: str | None = None
) -> ssl.SSLContext:
    """The SSL context for `Bus.open(..., ssl_context=...)` (amqps://).

    `ca_file`: the PEM file (or a directory of hashed certificates) of the CA that signed the broker's certificate;
    `None` trusts the system's CAs. The broker's host name (the URL's host) must match its certificate.
    `cert_file` / `key_file`: an optional client certificate, for a broker with `ssl_options.verify = verify_peer`
    (and for the EXTERNAL mechanism); `key_file` may be omitted when the key is inside `cert_file`.
    """
    if key_file is not None and cert_file is None:
        raise ValueError("a client key file was given without its certificate file (ESI_AMQP_CERT_FILE)")
    context = _client_context(ca_file)
    if cert_file is not None:
        _readable(cert_file, "client certificate file")
        if key_file is not None:
            _readable(key_file, "client key file")
        try:
            context.load_cert_chain(cert_file, key_file, password=key_password)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load the client certificate {cert_file!r} with its key: {exc}") from exc
    return context


def amqp_ssl_context_for_url(
    url: str, *, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext | None:
    """The context `Bus.open` needs for `url`: a verifying one for amqps://, `None` for plain amqp://.

    Refuses TLS files with a plain amqp:// URL (they would be silently ignored and the traffic sent in clear) and
    aiormq's `no_verify_ssl` URL option (it would turn verification off).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "no_verify_ssl" in parse_qs(parts.query):
        raise ValueError("the AMQP URL's no_verify_ssl option is refused: trust a private CA with ESI_AMQP_CA_FILE")
    if scheme == "amqps":
        return amqp_ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    if scheme == "amqp":
        if ca_file or cert_file or key_file:
            raise ValueError(
                "ESI_AMQP_CA_FILE/ESI_AMQP_CERT_FILE/ESI_AMQP_KEY_FILE are set but the AMQP URL is "
                "amqp://, which is not encrypted: use amqps://host:5671/"
            )
        return None
    raise ValueError(f"the AMQP URL must start with amqp:// or amqps://, not {parts.scheme}://")


def http_verify(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """httpx's `verify=` for a client of Creatio or the DMS.

    `None`: `True` (httpx's default trust store). A path: a context trusting that PEM bundle (or directory of hashed
    certificates) only, host names checked. Never `False`: there is no way to turn verification off here.
    """
    if ca_bundle is None or ca_bundle == "":
        return True
    if isinstance(ca_bundle, bool) or ca_bundle.strip().lower() in {"false", "0", "no", "off", "none"}:
        raise ValueError(
            "TLS verification cannot be turned off; name the CA bundle that signed the server's "
            "certificate instead (e.g. CREATIO_CA_BUNDLE=/etc/esi/creatio-ca.pem)"
        )
    return _client_context(ca_bundle)


def uvicorn_ssl_kwargs(
    cert_file: str | None, key_file: str | None, *, client_ca_file: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`/`uvicorn.run` to serve the API over HTTPS; `{}` when neither is set.

    `client_ca_file` additionally requires every client to present a certificate signed by that CA (mutual TLS).
    """
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise ValueError("a client CA file for the HTTP API needs ESI_TLS_CERT_FILE and ESI_TLS_KEY_FILE")
        return {}
    if cert_file is None or key_file is None:
        raise ValueError("HTTPS for the API needs both ESI_TLS_CERT_FILE and ESI_TLS_KEY_FILE")
    kwargs: dict[str, Any] = {
        "ssl_certfile": _readable(cert_file, "TLS certificate file"),
        "ssl_keyfile": _readable(key_file, "TLS key file"),
    }
    # fail at start-up, not at the first handshake, on a certificate that does not match its key
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot load the TLS certificate {cert_file!r} with its key {key_file!r}: {exc}") from exc
    if client_ca_file is not None:
        kwargs["ssl_ca_certs"] = _readable(client_ca_file, "client CA file")
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return kwargs
