"""Files attached to Creatio orders: an `OrderFile` row, then the bytes through `FileApiService/UploadFile` in chunks.

Attaching is idempotent, also when two copies of one message run at once (a redelivery while a frozen process
resumes): the row's Id is derived from the order, the name and the content (`attachment_id`), so every copy and
every repeat writes the same row — a second create of it is refused by Creatio and taken as "created", and the bytes
are uploaded again into it at the same offsets, which leaves the same file. A file of the same name and size attached
under another Id (by hand, or by a version of esi before the derived Id) is reported, not attached again.
"""

from __future__ import annotations

import hashlib
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

_NS = uuid.UUID("8b6f3e52-2d7a-4c1e-9f0b-5a3c7e91d204")


def attachment_id(order_id: str, file_name: str, content: bytes) -> str:
    """The `OrderFile.Id` of `content` attached to the order as `file_name`: the same on every copy and repeat."""
    digest = hashlib.sha256(content).hexdigest()
    return str(uuid.uuid5(_NS, f"{order_id.lower()}\n{file_name}\n{digest}"))


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

        Creates the `OrderFile` row under `attachment_id` (unless it exists: a repeat, or a concurrent copy), then
        uploads the bytes in `chunk_size` ranges into it. A row of that Id which already holds these bytes is
        reported as attached; one that does not yet (a failed attempt, a copy still uploading) is uploaded into
        again. A failed upload leaves the row for the retry; only a refusal (permanent) deletes it.

        Raises:
            PermanentError: the order id is not a GUID, the order does not exist, or Creatio refused the file.
            TransientError: a failure worth retrying; the call is idempotent.
        """
        size = len(content)
        if size == 0:
            raise PermanentError(
                f"crm: refusing to attach the empty file {file_name!r}", code="empty_file", system=SYSTEM
            )
        file_id = attachment_id(order_id, file_name, content)
        existing = await self._order_files(order_id, file_name)
        ours = any(row_id.lower() == file_id for row_id, _ in existing)
        if not ours:
            for other_id, existing_size in existing:
                if existing_size == size:
                    logger.debug("File %r of %d bytes is already attached to order %s", file_name, size, order_id)
                    return AttachedFile(id=other_id, name=file_name, size=size, already_attached=True)
        order_id = order_id.lower()
        if ours and await self._holds(file_id, content):
            logger.debug("File %r of %d bytes is already attached to order %s", file_name, size, order_id)
            return AttachedFile(id=file_id, name=file_name, size=size, already_attached=True)
        if not ours:
            await self._create_row(file_id, order_id, file_name, size)
        try:
            await self._upload(file_id, order_id, file_name, content, mime_type)
        except PermanentError:
            await self._delete_quietly(file_id)
            raise
        logger.debug("Attached %r (%d bytes) to order %s as file %s", file_name, size, order_id, file_id)
        return AttachedFile(id=file_id, name=file_name, size=size, already_attached=False)

    async def _create_row(self, file_id: str, order_id: str, file_name: str, size: int) -> None:
        """Create the row `file_id`; one a concurrent copy created meanwhile counts as created."""
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
        except PermanentError:
            # Creatio refuses a second row of one Id (400); whether that was the refusal is read, not parsed
            if not await self._row_exists(file_id):
                raise
            logger.debug("File row %s was created by a concurrent copy of the message", file_id)

    async def _holds(self, file_id: str, content: bytes) -> bool:
        """Whether the row `file_id` holds exactly `content` (Creatio serves a file only once it is complete)."""
        try:
            return await self.download(file_id) == content
        except NotFound:
            return False

    async def _row_exists(self, file_id: str) -> bool:
        rows = await self._odata.rows(
            "OrderFile", {"$filter": f"Id eq {file_id}", "$select": "Id"}, operation="find_order_file"
        )
        return bool(rows)

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
