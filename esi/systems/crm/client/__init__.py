"""The Creatio client: cookie-session login, OData 4 on orders and their statuses, files attached to orders.

Every call carries the session cookies, the `BPMCSRF` header and `ForceUseSession: true`. A session that has expired
shows up in one of three ways (HTTP 401; a 3xx to `/Login/`; HTTP 200 with an HTML login page): the client then logs
in again — once, however many calls noticed it at the same time — and retries the call once, without spending one of
the bus's retries. Every other failure is translated into `esi.errors` at this boundary.

The parts: `session` (the authenticated call and the renewal shared by concurrent callers), `cookie_login` (the
forms login), `odata` (orders and statuses), `files` (attachments); `CreatioClient` composes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import httpx

from esi.systems.crm.client.cookie_login import LOGIN_PATH, CookieLogin
from esi.systems.crm.client.files import FILE_TYPE_ID, AttachedFile, OrderFiles
from esi.systems.crm.client.odata import CreatioOrder, OData, Orders, is_guid, odata_string
from esi.systems.crm.client.policies import Policies
from esi.systems.crm.client.session import CreatioSession, session_http_client

__all__ = [
    "FILE_TYPE_ID",
    "LOGIN_PATH",
    "AttachedFile",
    "CreatioClient",
    "CreatioOrder",
    "is_guid",
    "odata_string",
]


class CreatioClient:
    """An async client for one Creatio instance, safe for many concurrent calls.

    Use it as an async context manager (or call `aclose()`); it logs in on first use.

    Args:
        base_url: Creatio's root URL, e.g. `https://crm.example.com` (a path prefix is kept).
        username: the Creatio user the bus acts as.
        password: that user's password (never logged).
        odata_path: where OData 4 lives: `/0/odata` on .NET Framework builds, `/odata` on .NET Core builds.
        timeout: seconds allowed for each of connect, read, write and pool acquisition.
        ca_bundle: a CA bundle to trust instead of the system's; verification is always on.
        max_connections: the connection pool's size.
        upload_chunk_size: bytes per `UploadFile` request.
        transport: an httpx transport to use instead of aiohttp's sockets (tests).
        rest_path: where Creatio's REST services live (`/0/rest`; `/rest` on some .NET Core builds).
    """

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        password: str,
        odata_path: str = "/0/odata",
        timeout: float = 10.0,
        ca_bundle: str | None = None,
        max_connections: int = 100,
        upload_chunk_size: int = 1_048_576,
        transport: httpx.AsyncBaseTransport | None = None,
        rest_path: str = "/0/rest",
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
        self._auth = CookieLogin(http, username=username, password=password)
        self._session = CreatioSession(http, self._auth)
        odata = OData(self._session, odata_path)
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
        """Log in now, replacing any current session.

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
