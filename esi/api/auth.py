"""From an HTTP request to its caller's `Principal`: one way in, for the fast path (esi.api.hot) and FastAPI alike.

`Authenticator.authenticate` reads the credentials off the request and asks the registry (`esi.security.auth`);
`Authenticator.dependency` is the FastAPI dependency, which declares the two schemes in the OpenAPI document and
then calls `authenticate` — nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.security import APIKeyHeader
from fastapi.security.base import SecurityBase

from esi.security.auth import API_KEY_HEADER, ClientRegistry
from esi.security.scopes import Principal, SendScope

__all__ = ["OPEN", "Authenticator", "principal_dependency", "remote_of"]

#: the caller when authentication is off (demo only): everything is allowed
OPEN = Principal("anonymous", send_scopes=(SendScope("*", "*"),), can_read=True, is_operator=True)


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

    def __init__(self, registry: ClientRegistry | None) -> None:
        self.registry = registry

    @property
    def enabled(self) -> bool:
        return self.registry is not None

    async def authenticate(self, request: Request) -> Principal:
        """The caller's principal; `ApiError(401)` without valid credentials."""
        if self.registry is None:
            return OPEN
        headers = request.headers
        return await self.registry.authenticate_async(
            headers.get("authorization"), headers.get(API_KEY_HEADER), remote=remote_of(request)
        )

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
