"""What the CRM adapter does with each message type: pure logic over the Creatio client."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from esi.errors import InvalidMessage
from esi.messages import Envelope, Handler
from esi.systems.crm.messages import OrderStatusUpdated, PdfReceived, PolicyInfo, SendPdfFile, UpdateOrderStatus
from esi.systems.crm.tables import OrderClaim

if TYPE_CHECKING:
    from esi.systems.crm.client import AttachedFile, CreatioOrder


class CreatioApi(Protocol):
    async def find_order(self, order_ref: str) -> CreatioOrder: ...

    async def find_status_id(self, name: str) -> str: ...

    async def set_order_status(self, order_id: str, status_id: str) -> None: ...

    async def attach_file(
        self, order_id: str, *, file_name: str, content: bytes, mime_type: str = "application/pdf"
    ) -> AttachedFile: ...


class OrderUpdates(Protocol):
    """Where the newest update of each order is kept (the store)."""

    async def claim_order_update(
        self, order_key: str, *, changed_at: str, status: str, message_id: str
    ) -> OrderClaim: ...

    async def order_update(self, order_key: str) -> OrderClaim | None: ...


def utc_iso(moment: datetime) -> str:
    """A time as the store orders it: UTC, microseconds, as text (a time without offset is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def crm_handlers(client: CreatioApi, *, max_pdf_bytes: int, updates: OrderUpdates) -> dict[str, Handler]:
    async def apply_in_order(
        envelope: Envelope, payload: UpdateOrderStatus, order_id: str, status_id: str
    ) -> str | None:
        """Set the status unless a newer update of the order was applied; None when applied, else why not.

        The claim (a compare-and-set in the store) comes before the PATCH, so a late, older update never reaches
        Creatio; if a newer one claims the order while this PATCH is in flight (two replicas at once), the newer
        status is set again after it, so the order ends on the newest status either way.
        """
        if payload.status_changed_at is None:  # nothing to order it by: applied as it comes
            await client.set_order_status(order_id, status_id)
            return None
        key, changed_at = f"crm:{order_id}", utc_iso(payload.status_changed_at)
        claim = await updates.claim_order_update(
            key, changed_at=changed_at, status=payload.status, message_id=envelope.message_id
        )
        if not claim.held:
            return (
                f"superseded: the order already has status {claim.status!r} from an update of "
                f"{claim.changed_at}, newer than this one ({changed_at})"
            )
        await client.set_order_status(order_id, status_id)  # a PATCH to the same value is harmless on redelivery
        newest = await updates.order_update(key)
        if newest is not None and newest.changed_at > changed_at:
            await client.set_order_status(order_id, await client.find_status_id(newest.status))
            return (
                f"superseded while being applied: status {newest.status!r} from an update of "  # noqa: S608 - a note for the operator, not SQL
                f"{newest.changed_at} was set again after it"
            )
        return None

    async def update_order_status(envelope: Envelope, payload: UpdateOrderStatus) -> list[Envelope]:
        order = await client.find_order(payload.order_id)
        status_id = await client.find_status_id(payload.status)
        superseded = await apply_in_order(envelope, payload, order.id, status_id)
        updated = OrderStatusUpdated(
            order_id=payload.order_id,
            order_guid=order.id,
            order_number=order.number,
            status=payload.status,
            status_id=status_id,
            applied=superseded is None,
            note=superseded,
        )
        if superseded is not None:
            return [envelope.reply("order_status_updated", updated.model_dump(exclude_none=True))]
        if payload.needs_policy_info and not payload.policy_number:
            # the original system's 1C asked for policy info without saying which policy: nothing to ask the DMS
            updated = updated.model_copy(update={"note": "no policy_number given: the DMS was not asked"})
        elif payload.needs_policy_info and payload.policy_number:
            # ask the DMS; its answer comes back to crm_queue with this context echoed, and the reply to the
            # requester is built from it (see policy_info_response)
            context = {
                "reply_to": envelope.source_system,
                "order_status_updated": updated.model_dump(),
                "parent_message_id": envelope.message_id,
                # the requester's own context (its wish to be told the outcome), given back with the answer
                **({"requester_context": envelope.context} if envelope.context else {}),
            }
            # the DMS's request, by its message type: its payload model is the DMS's (validated where it is consumed)
            return [
                envelope.request("dms", "get_policy_info", {"policy_number": payload.policy_number}, context=context)
            ]
        return [envelope.reply("order_status_updated", updated.model_dump(exclude_none=True))]

    async def policy_info_response(envelope: Envelope, payload: BaseModel | None) -> list[Envelope]:
        context = envelope.context or {}
        if "order_status_updated" not in context or "reply_to" not in context:
            raise InvalidMessage(
                "policy_info_response without the context of its update_order_status", code="missing_context"
            )
        updated = OrderStatusUpdated.model_validate(context["order_status_updated"])
        if payload is not None:  # the DMS's answer (its own model), mapped onto the CRM's
            updated = updated.model_copy(update={"policy_info": PolicyInfo.model_validate(payload.model_dump())})
        answer = Envelope(
            message_id=envelope.derived_id("order_status_updated"),
            request_id=envelope.request_id,
            causation_id=envelope.message_id,
            source_system="crm",
            target_system=context["reply_to"],
            message_type="order_status_updated",
            payload=updated.model_dump(exclude_none=True),
            error=envelope.error,
            context=context.get("requester_context"),
        )
        return [answer]

    async def send_pdf_file(envelope: Envelope, payload: SendPdfFile) -> list[Envelope]:
        content = payload.pdf_bytes()
        if len(content) > max_pdf_bytes:
            raise InvalidMessage(f"the PDF is {len(content)} bytes; the limit is {max_pdf_bytes}", code="too_large")
        order = await client.find_order(payload.order_id)
        attached = await client.attach_file(order.id, file_name=payload.file_name, content=content)
        answer = PdfReceived(
            order_id=payload.order_id,
            order_guid=order.id,
            file_id=attached.id,
            file_name=attached.name,
            size=attached.size,
            already_attached=attached.already_attached,
        )
        return [envelope.reply("pdf_received", answer.model_dump())]

    return {
        "update_order_status": update_order_status,
        "policy_info_response": policy_info_response,
        "send_pdf_file": send_pdf_file,
    }


class PolicyWriter(Protocol):
    async def record_policy(self, policy: Mapping[str, object]) -> str: ...


def policy_handlers(client: PolicyWriter) -> dict[str, Handler]:
    """The DMS's policy events (issued, changed, cancelled), each written to Creatio's `UsrPolicy` as the policy's
    state after the change (an update of the row the policy number names: a repeat changes nothing)."""

    async def record(envelope: Envelope, _payload: BaseModel | None) -> list[Envelope]:
        await client.record_policy(envelope.payload)
        return []

    return {f"dms.{name}": record for name in ("policy_issued", "policy_changed", "policy_cancelled")}
