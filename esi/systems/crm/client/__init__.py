"""The Creatio client: cookie-session login or OAuth 2.0 client credentials, OData 4 on orders and their statuses,
files attached to orders, and the reader of what changed (the poller's).

With the forms login (`auth="cookie"`) every call carries the session cookies, the `BPMCSRF` header and
`ForceUseSession: true`. A session that has expired shows up in one of three ways (HTTP 401; a 3xx to `/Login/`;
HTTP 200 with an HTML login page): the client then logs in again — once, however many calls noticed it at the same
time — and retries the call once, without spending one of the bus's retries. With OAuth (`auth="oauth"`) every call
carries a bearer token from the Identity Service, renewed shortly before it expires and after a 401, the same way.
Every other failure is translated into `esi.errors` at this boundary.

The parts: `session` (the authenticated call and the renewal shared by concurrent callers), `cookie_login` (the
forms login), `oauth` (the client-credentials grant), `odata` (orders and statuses, changes), `files`
(attachments); `CreatioClient` composes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx

from esi.systems.crm.client.cookie_login import LOGIN_PATH, CookieLogin
from esi.systems.crm.client.files import FILE_TYPE_ID, AttachedFile, OrderFiles
from esi.systems.crm.client.oauth import TOKEN_PATH, ClientCredentials, token_url
from esi.systems.crm.client.odata import (
    ChangedPage,
    CreatioOrder,
    OData,
    Orders,
    Watermark,
    changed_since,
    is_guid,
    newest_change,
    odata_string,
)
from esi.systems.crm.client.policies import Policies
from esi.systems.crm.client.session import Authenticator, CreatioSession, session_http_client

if TYPE_CHECKING:
    from esi.systems.crm.settings import CreatioSettings

__all__ = [
    "FILE_TYPE_ID",
    "LOGIN_PATH",
    "TOKEN_PATH",
    "AttachedFile",
    "ChangedPage",
    "CreatioClient",
    "CreatioOrder",
    "Watermark",
    "is_guid",
    "odata_string",
]


class CreatioClient:
    """An async client for one Creatio instance, safe for many concurrent calls.

    Use it as an async context manager (or call `aclose()`); it logs in on first use.

    Args:
        base_url: Creatio's root URL, e.g. `https://crm.example.com` (a path prefix is kept).
        username: the Creatio user the bus acts as (`auth="cookie"`).
        password: that user's password (never logged).
        odata_path: where OData 4 lives: `/0/odata` on .NET Framework builds, `/odata` on .NET Core builds.
        timeout: seconds allowed for each of connect, read, write and pool acquisition.
        ca_bundle: a CA bundle to trust instead of the system's; verification is always on.
        max_connections: the connection pool's size.
        upload_chunk_size: bytes per `UploadFile` request.
        transport: an httpx transport to use instead of aiohttp's sockets (tests).
        rest_path: where Creatio's REST services live (`/0/rest`; `/rest` on some .NET Core builds).
        auth: `"cookie"` (the forms login with `username` and `password`) or `"oauth"` (client credentials).
        identity_url: the Identity Service's URL (`auth="oauth"`); Creatio's `base_url` when not given.
        client_id: the OAuth client application's id (`auth="oauth"`).
        client_secret: its secret (never logged).
        token_margin: seconds before a token's expiry at which it is renewed (at most a tenth of its lifetime).
    """

    def __init__(
        self,
        *,
        base_url: str,
        username: str = "",
        password: str = "",
        odata_path: str = "/0/odata",
        timeout: float = 10.0,
        ca_bundle: str | None = None,
        max_connections: int = 100,
        upload_chunk_size: int = 1_048_576,
        transport: httpx.AsyncBaseTransport | None = None,
        rest_path: str = "/0/rest",
        auth: Literal["cookie", "oauth"] = "cookie",
        identity_url: str | None = None,
        client_id: str = "",
        client_secret: str = "",
        token_margin: float = 60.0,
    ) -> None:
        if upload_chunk_size <= 0:
            raise ValueError("upload_chunk_size must be positive")
        http = session_http_client(
            base_url=base_url,
            timeout=timeout,
            ca_bundle=ca_bundle,
            max_connections=max_connections,
            transport=transport,
        )
        self._auth: Authenticator[Any]
        if auth == "oauth":
            self._auth = ClientCredentials(
                http,
                token_url=token_url(identity_url or base_url),
                client_id=client_id,
                client_secret=client_secret,
                margin=token_margin,
            )
        elif auth == "cookie":
            self._auth = CookieLogin(http, username=username, password=password)
        else:
            raise ValueError(f"auth must be 'cookie' or 'oauth', not {auth!r}")
        self._session = CreatioSession(http, self._auth)
        odata = self._odata = OData(self._session, odata_path)
        self._orders = Orders(odata)
        self._policies = Policies(odata)
        self._files = OrderFiles(self._session, odata, rest_path=rest_path, chunk_size=upload_chunk_size)

    async def __aenter__(self) -> CreatioClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._session.aclose()

    async def login(self) -> None:
        """Log in now (or obtain a token), replacing any current session.

        Raises:
            PermanentError: (code `auth_failed`) Creatio refused the credentials.
            TransientError: Creatio could not be reached or answered 5xx/429.
        """
        await self._auth.login()

    # -- orders and statuses

    async def find_order(self, order_ref: str) -> CreatioOrder:
        """The order `order_ref` names: its Id (a GUID) or else its Number.

        Raises:
            NotFound: no such order.
            BusinessError: (code `ambiguous_order`) several orders carry that number.
        """
        return await self._orders.find_order(order_ref)

    async def find_status_id(self, name: str) -> str:
        """The Id of the `OrderStatus` called `name`; known ids are cached.

        Raises:
            BusinessError: (code `unknown_status`) no status has that name.
        """
        return await self._orders.find_status_id(name)

    async def set_order_status(self, order_id: str, status_id: str) -> None:
        """Set the order's `StatusId` (Creatio answers 204).

        Raises:
            NotFound: no order with that Id.
            PermanentError: Creatio refused the value (e.g. a status id that does not exist).
        """
        await self._orders.set_order_status(order_id, status_id)

    # -- files

    async def find_order_file(self, order_id: str, file_name: str) -> tuple[str, int] | None:
        """`(id, size)` of a file called `file_name` attached to the order, or None."""
        return await self._files.find(order_id, file_name)

    async def attach_file(
        self, order_id: str, *, file_name: str, content: bytes, mime_type: str = "application/pdf"
    ) -> AttachedFile:
        """Attach `content` to the order as `file_name`, unless a file of that name and size already is.

        Creates the `OrderFile` row (with an Id chosen here), then uploads the bytes in `upload_chunk_size`
        ranges. If either step fails, the row is deleted (best effort) so that a retry does not mistake it for a
        finished attachment.

        Raises:
            PermanentError: the order id is not a GUID, the order does not exist, or Creatio refused the file.
            TransientError: a failure worth retrying; the call is idempotent.
        """
        return await self._files.attach(order_id, file_name=file_name, content=content, mime_type=mime_type)

    async def download_file(self, file_id: str) -> bytes:
        """The content of an attached file (`FileService/Download`)."""
        return await self._files.download(file_id)

    # -- changes

    def changed_since(
        self, entity: str, watermark: Watermark, *, page_size: int = 100, select: tuple[str, ...] = ()
    ) -> AsyncIterator[ChangedPage]:
        """The rows of `entity` changed since `watermark`, oldest first, a page at a time (see
        `esi.systems.crm.client.odata.changed_since`); each page comes with the watermark that takes it."""
        return changed_since(self._odata, entity, watermark, page_size=page_size, select=select)

    async def newest_change(self, entity: str) -> datetime | None:
        """The newest `ModifiedOn` of `entity`, None when it has no rows."""
        return await newest_change(self._odata, entity)

    async def status_name(self, status_id: str) -> str | None:
        """The `Name` of the `OrderStatus` with that Id (cached), None for none."""
        return await self._orders.status_name(status_id)

    # -- policies (the DMS's events)

    async def record_policy(self, policy: Mapping[str, object]) -> str:
        """Write a policy's state to `UsrPolicy` (esi.systems.crm.client.policies); its row's Id."""
        return await self._policies.record(policy)

    # -- health

    async def check(self) -> None:
        """Readiness: log in if needed and make one cheap authenticated call.

        Raises:
            TransientError: Creatio is unreachable or unwell.
            PermanentError: Creatio refuses the credentials.
        """
        await self._orders.check()


def client_from(settings: CreatioSettings) -> CreatioClient:
    """The client of the Creatio that `settings` (`CRM_*`) describe: the adapter's, and the poller's own."""
    return CreatioClient(
        base_url=settings.url,
        username=settings.username,
        password=settings.password.get_secret_value(),
        odata_path=settings.odata_path,
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        max_connections=settings.max_concurrency,
        auth=settings.auth,
        identity_url=settings.identity_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret.get_secret_value(),
        token_margin=settings.token_margin,
    )
