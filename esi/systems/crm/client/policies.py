"""Policies in Creatio: the DMS's policy events, written to the `UsrPolicy` object (a custom object a site adds:
docs/creatio.md) — one row per policy, its Id derived from the policy number, so that writing it again is an
update and a repeat changes nothing.

Creatio itself keeps the order of a policy's changes: the row's `UsrRevision` is read before it is written, and a
change older than (or as old as) the row's is not written. esi hands a subscriber the changes of one record one at a
time within a process (docs/concepts/events.md), but with several CRM replicas, or a write that timed out at esi and
was applied by Creatio later, an older change can arrive last; this check stops it from overwriting a newer one.
What is left is the moment between the read and the write of two replicas writing one policy at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from esi.errors import PermanentError
from esi.systems.crm.client.odata import OData

log = logging.getLogger(__name__)

ENTITY = "UsrPolicy"
_NS = uuid.UUID("3d0f7a2c-61b4-4f0e-8c55-0b8e1d6a4c21")


def policy_row_id(policy_number: str) -> str:
    """The `UsrPolicy.Id` of a policy: the same for the same number, on every replica and every repeat."""
    return str(uuid.uuid5(_NS, policy_number))


class Policies:
    def __init__(self, odata: OData) -> None:
        self._odata = odata

    async def record(self, policy: Mapping[str, object]) -> str:
        """Write the policy's state (update, or create on the first event of it); its row's Id."""
        number = str(policy["policy_number"])
        row_id = policy_row_id(number)
        values = {
            "UsrNumber": number,
            "UsrStatus": str(policy.get("status") or ""),
            "UsrRevision": int(str(policy.get("revision") or 0)),
            "UsrHolder": str(policy.get("holder_name") or ""),
        }
        revision = int(str(policy.get("revision") or 0))
        session = self._odata.session
        have = await self._revision(row_id)
        if have is None:
            try:
                await session.call(
                    "POST", self._odata.path(ENTITY), json_body={"Id": row_id, **values}, operation="record_policy"
                )
                return row_id
            except PermanentError:
                have = await self._revision(row_id)  # created meanwhile by another copy or replica: compare
                if have is None:
                    raise
        if revision and have >= revision:  # a policy without revisions (0) is written every time, as before
            log.info("policy %s: Creatio holds revision %s already; revision %s not written", number, have, revision)
            return row_id
        await session.call(
            "PATCH", self._odata.path(f"{ENTITY}({row_id})"), json_body=values, operation="record_policy",
            expect="empty",
        )  # fmt: skip
        return row_id

    async def _revision(self, row_id: str) -> int | None:
        """The revision the policy's row holds, or None when there is no row."""
        rows = await self._odata.rows(
            ENTITY, {"$filter": f"Id eq {row_id}", "$select": "Id,UsrRevision"}, operation="record_policy"
        )
        return int(rows[0].get("UsrRevision") or 0) if rows else None
