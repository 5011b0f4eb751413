"""Files attached to Creatio orders: an `OrderFile` row, then the bytes through `FileApiService/UploadFile` in chunks.

Attaching is idempotent: a file of the same name and size already attached to the order is reported, not attached
again; a row whose upload failed is deleted so that a retry does not mistake it for a finished attachment.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from esi.errors import NotFound, PermanentError
from esi.systems.crm.client.odata import OData, odata_string, require_guid
from esi.systems.crm.client.session import SYSTEM, CreatioSession, json_or_none

logger = logging.getLogger(__name__)

#: `OrderFile.TypeId` of an attached file (as opposed to a link)
FILE_TYPE_ID = "529bc2f8-0ee0-df11-971b-001d60e938c6"


@dataclass(frozen=True)
class AttachedFile:
    """A file attached to an order; `already_attached` says it was there before this call."""

    id: str
    name: str
    size: int
    already_attached: bool


class OrderFiles:
    """`OrderFile` rows and their content.

    Args:
        session: the authenticated session calls go through.
        odata: the OData service the rows live in.
        rest_path: where Creatio's REST services live (`/0/rest`; `/rest` on some .NET Core builds).
        chunk_size: bytes per `UploadFile` request (positive).
    """

    def __init__(self, session: CreatioSession, odata: OData, *, rest_path: str, chunk_size: int) -> None:
        self._session = session
        self._odata = odata
        self._rest = "/" + rest_path.strip("/")
        self._chunk_size = chunk_size

    async def _order_files(self, order_id: str, file_name: str) -> list[tuple[str, int]]:
        require_guid(order_id, "order id")
        rows = await self._odata.rows(
            "OrderFile",
            {
                "$filter": f"OrderId eq {order_id.lower()} and Name eq {odata_string(file_name)}",
                "$select": "Id,Name,Size",
            },
            operation="find_order_file",
        )
        return [(str(row["Id"]), int(row.get("Size") or 0)) for row in rows]

    async def find(self, order_id: str, file_name: str) -> tuple[str, int] | None:
        """`(id, size)` of a file called `file_name` attached to the order, or None."""
        files = await self._order_files(order_id, file_name)
        return files[0] if files else None

    async def attach(self, order_id: str, *, file_name: str, content: bytes, mime_type: str) -> AttachedFile:
        """Attach `content` to the order as `file_name`, unless a file of that name and size already is.

        Creates the `OrderFile` row (with an Id chosen here), then uploads the bytes in `chunk_size` ranges. If
        either step fails, the row is deleted (best effort).

        Raises:
            PermanentError: the order id is not a GUID, the order does not exist, or Creatio refused the file.
            TransientError: a failure worth retrying; the call is idempotent.
        """
        size = len(content)
        if size == 0:
            raise PermanentError(
                f"crm: refusing to attach the empty file {file_name!r}", code="empty_file", system=SYSTEM
            )
        for file_id, existing_size in await self._order_files(order_id, file_name):
            if existing_size == size:
                logger.debug("File %r of %d bytes is already attached to order %s", file_name, size, order_id)
                return AttachedFile(id=file_id, name=file_name, size=size, already_attached=True)
        order_id = order_id.lower()
        # the row's Id is chosen here so that a row created by a call that then failed can be found and removed
        file_id = str(uuid.uuid4())
        try:
            await self._session.call(
                "POST",
                self._odata.path("OrderFile"),
                operation="attach_file",
                json_body={
                    "Id": file_id,
                    "Name": file_name,
                    "OrderId": order_id,
                    "Size": size,
                    "TotalSize": size,
                    "TypeId": FILE_TYPE_ID,
                },
            )
            await self._upload(file_id, order_id, file_name, content, mime_type)
        except Exception:
            await self._delete_quietly(file_id)
            raise
        logger.debug("Attached %r (%d bytes) to order %s as file %s", file_name, size, order_id, file_id)
        return AttachedFile(id=file_id, name=file_name, size=size, already_attached=False)

    async def _upload(self, file_id: str, order_id: str, file_name: str, content: bytes, mime_type: str) -> None:
        total = len(content)
        params = {
            "fileId": file_id,
            "totalFileLength": str(total),
            "mimeType": mime_type,
            "fileName": file_name,
            "columnName": "Data",
            "entitySchemaName": "OrderFile",
            "parentColumnName": "Order",
            "parentColumnValue": order_id,
        }
        ascii_name = file_name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
        disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name, safe='')}"
        for start in range(0, total, self._chunk_size):
            chunk = content[start : start + self._chunk_size]
            end = start + len(chunk) - 1
            response = await self._session.call(
                "POST",
                f"{self._rest}/FileApiService/UploadFile",
                params=params,
                content=chunk,
                operation="upload_file",
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end}/{total}",
                    "Content-Disposition": disposition,
                },
            )
            result = json_or_none(response)
            if isinstance(result, dict) and result.get("success") is False:
                raise PermanentError(
                    f"crm upload_file: Creatio refused the chunk {start}-{end}/{total}: {_short(result)}",
                    code="upload_refused",
                    system=SYSTEM,
                )

    async def _delete_quietly(self, file_id: str) -> None:
        try:
            await self._session.call(
                "DELETE", self._odata.path(f"OrderFile({file_id})"), operation="delete_file", expect="empty"
            )
        except NotFound:
            pass  # never created
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            logger.warning("Could not delete the half-uploaded file %s: %s", file_id, exc)

    async def download(self, file_id: str) -> bytes:
        """The content of an attached file (`FileService/Download`)."""
        require_guid(file_id, "file id")
        response = await self._session.call(
            "GET",
            f"{self._rest}/FileService/Download/OrderFile/{file_id.lower()}",
            operation="download_file",
            expect="bytes",
            headers={"Accept": "*/*"},
        )
        return response.content


def _short(value: object, limit: int = 300) -> str:
    return json.dumps(value, ensure_ascii=False)[:limit]
