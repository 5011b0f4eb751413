"""From an HTTP request to its caller's `Principal`: one way in, for the fast path (esi.api.hot) and FastAPI alike.

`Authenticator.authenticate` reads the credentials off the request and asks the registry (`esi.security.auth`);
`Authenticator.dependency` is the FastAPI dependency, which declares the two schemes in the OpenAPI document and
then calls `authenticate` — nothing else.

The source address the registry throttles failed sign-ins by is the peer's, or what `X-Forwarded-For` says when the
peer is one of the trusted proxies (`ESI_TRUSTED_PROXIES`, `esi.security.throttle.TrustedProxies`). When a pair
starts being throttled, the Authenticator writes it to the audit log (once per pair and window).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.security import APIKeyHeader
from fastapi.security.base import SecurityBase

from esi.errors import ApiError
from esi.security.auth import API_KEY_HEADER, ClientRegistry
from esi.security.scopes import OPERATOR_SCOPES, Principal, SendScope
from esi.security.throttle import ThrottleEvent, TrustedProxies

__all__ = ["OPEN", "Authenticator", "principal_dependency", "remote_of"]

log = logging.getLogger(__name__)

#: what writes a throttled pair to the audit log (`esi.store.audit.Audit.record`)
AuditRecord = Callable[..., Awaitable[None]]

#: the caller when authentication is off (demo only): everything is allowed
OPEN = Principal(
    "anonymous",
    send_scopes=(SendScope("*", "*"),),
    can_read=True,
    is_operator=True,
    event_sources=("*",),
    feeds=("*",),
    scopes=OPERATOR_SCOPES,
)


class _BasicHeader(SecurityBase):
    """Declares HTTP Basic in the OpenAPI and hands over the raw header (FastAPI's HTTPBasic answers a malformed
    header with its own 401, which would bypass the error shape and the failure log)."""

    def __init__(self) -> None:
        self.model = HTTPBaseModel(scheme="basic", description="the client id and its password")
        self.scheme_name = "basic"

    async def __call__(self, request: Request) -> str | None:
        return request.headers.get("authorization")


_BASIC = _BasicHeader()
_API_KEY = APIKeyHeader(name=API_KEY_HEADER, scheme_name="apiKey", auto_error=False, description="<client_id>.<secret>")


def remote_of(request: Request) -> str | None:
    """The caller's `host:port`, for the failure log."""
    return f"{request.client.host}:{request.client.port}" if request.client else None


class Authenticator:
    """Authenticates the API's callers against `registry`; with no registry, authentication is off and every
    caller is `OPEN` (refused with ESI_ENV=production)."""

    def __init__(
        self,
        registry: ClientRegistry | None,
        *,
        trusted_proxies: TrustedProxies | None = None,
        audit: AuditRecord | None = None,
    ) -> None:
        self.registry = registry
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self._audit = audit
        self._audits: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    async def authenticate(self, request: Request) -> Principal:
        """The caller's principal; `ApiError(401)` without valid credentials."""
        if self.registry is None:
            return OPEN
        headers = request.headers
        peer = request.client.host if request.client else None
        remote = remote_of(request)
        address = peer or "unknown"
        if self.trusted_proxies:
            address = self.trusted_proxies.source(peer, headers.get("x-forwarded-for"))
            if address != peer:
                remote = f"{address} via {remote}"
        try:
            return await self.registry.authenticate_async(
                headers.get("authorization"), headers.get(API_KEY_HEADER), remote=remote, address=address
            )
        except ApiError:
            self._audit_throttled()
            raise

    def _audit_throttled(self) -> None:
        """Write the pairs that started being throttled to the audit log, in the background."""
        assert self.registry is not None  # noqa: S101 - only called with a registry; narrows for mypy
        events = self.registry.throttle_events()
        if not events or self._audit is None:
            return
        for event in events:
            task = asyncio.get_running_loop().create_task(self._record(event))
            self._audits.add(task)
            task.add_done_callback(self._audits.discard)

    async def _record(self, event: ThrottleEvent) -> None:
        assert self._audit is not None  # noqa: S101 - checked by the caller; narrows for mypy
        try:
            await self._audit(
                "auth.throttled",
                client_id=event.client_id[:64],
                subject=event.address,
                count=event.failures,
                detail={"window_s": event.window_s, "retry_after_s": event.retry_after_s},
            )
        except Exception as exc:  # noqa: BLE001 - the store is away: the log line has it already
            log.warning(
                "could not write the throttling of %r from %s to the audit log: %s",
                event.client_id[:64],
                event.address,
                exc,
            )

    async def drain(self) -> None:
        """Wait for the audit records under way (tests, shutdown)."""
        while self._audits:
            await asyncio.gather(*list(self._audits), return_exceptions=True)

    @property
    def dependency(self) -> Callable[..., Awaitable[Principal]]:
        """The FastAPI dependency giving the caller's principal (no security scheme is declared when off)."""
        return self._principal if self.registry is not None else self._open

    async def _principal(
        self, request: Request, _authorization: str | None = Depends(_BASIC), _api_key: str | None = Depends(_API_KEY)
    ) -> Principal:
        # the two header dependencies only declare the schemes in the OpenAPI document
        return await self.authenticate(request)

    async def _open(self) -> Principal:
        return OPEN


def principal_dependency(registry: ClientRegistry) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency returning the caller's `Principal` (401 otherwise); both schemes show in the OpenAPI.

    current = principal_dependency(registry)
    async def endpoint(principal: Principal = Depends(current)): ...
    """
    return Authenticator(registry).dependency
