"""Policies in Creatio: the DMS's policy events, written to the `UsrPolicy` object (a custom object a site adds:
docs/creatio.md) — one row per policy, its Id derived from the policy number, so that writing it again is an
update and a repeat changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from esi.errors import NotFound
from esi.systems.crm.client.odata import OData

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
        session = self._odata.session
        try:
            await session.call(
                "PATCH", self._odata.path(f"{ENTITY}({row_id})"), json_body=values, operation="record_policy",
                expect="empty",
            )  # fmt: skip
        except NotFound:
            await session.call(
                "POST", self._odata.path(ENTITY), json_body={"Id": row_id, **values}, operation="record_policy"
            )
        return row_id
