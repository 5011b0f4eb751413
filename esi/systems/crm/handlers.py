"""What the CRM adapter does with each message type: pure logic over the Creatio client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from esi.errors import InvalidMessage
from esi.messages import Envelope, Handler
from esi.messages.crm import OrderStatusUpdated, PdfReceived, SendPdfFile, UpdateOrderStatus
from esi.messages.dms import GetPolicyInfo, PolicyInfo

if TYPE_CHECKING:
    from esi.systems.crm.client import AttachedFile, CreatioOrder


class CreatioApi(Protocol):
    async def find_order(self, order_ref: str) -> CreatioOrder: ...

    async def find_status_id(self, name: str) -> str: ...

    async def set_order_status(self, order_id: str, status_id: str) -> None: ...

    async def attach_file(self, order_id: str, *, file_name: str, content: bytes,
                          mime_type: str = "application/pdf") -> AttachedFile: ...


def crm_handlers(client: CreatioApi, *, max_pdf_bytes: int) -> dict[str, Handler]:
    async def update_order_status(envelope: Envelope, payload: UpdateOrderStatus) -> list[Envelope]:
        order = await client.find_order(payload.order_id)
        status_id = await client.find_status_id(payload.status)
        await client.set_order_status(order.id, status_id)  # a PATCH to the same value is harmless on redelivery
        updated = OrderStatusUpdated(order_id=payload.order_id, order_guid=order.id, order_number=order.number,
                                     status=payload.status, status_id=status_id)
        if payload.needs_policy_info:
            # ask the DMS; its answer comes back to crm_queue with this context echoed, and the reply to the
            # requester is built from it (see policy_info_response)
            context = {"reply_to": envelope.source_system, "order_status_updated": updated.model_dump(),
                       "parent_message_id": envelope.message_id}
            request = GetPolicyInfo(policy_number=payload.policy_number or "")
            return [envelope.request("dms", "get_policy_info", request.model_dump(), context=context)]
        return [envelope.reply("order_status_updated", updated.model_dump(exclude_none=True))]

    async def policy_info_response(envelope: Envelope, payload: PolicyInfo | None) -> list[Envelope]:
        context = envelope.context or {}
        if "order_status_updated" not in context or "reply_to" not in context:
            raise InvalidMessage("policy_info_response without the context of its update_order_status",
                                 code="missing_context")
        updated = OrderStatusUpdated.model_validate(context["order_status_updated"])
        if payload is not None:
            updated = updated.model_copy(update={"policy_info": payload})
        answer = Envelope(
            message_id=envelope.derived_id("order_status_updated"), request_id=envelope.request_id,
            causation_id=envelope.message_id, source_system="crm", target_system=context["reply_to"],
            message_type="order_status_updated", payload=updated.model_dump(exclude_none=True),
            error=envelope.error,
        )
        return [answer]

    async def send_pdf_file(envelope: Envelope, payload: SendPdfFile) -> list[Envelope]:
        content = payload.pdf_bytes()
        if len(content) > max_pdf_bytes:
            raise InvalidMessage(f"the PDF is {len(content)} bytes; the limit is {max_pdf_bytes}", code="too_large")
        order = await client.find_order(payload.order_id)
        attached = await client.attach_file(order.id, file_name=payload.file_name, content=content)
        answer = PdfReceived(order_id=payload.order_id, order_guid=order.id, file_id=attached.id,
                             file_name=attached.name, size=attached.size, already_attached=attached.already_attached)
        return [envelope.reply("pdf_received", answer.model_dump())]

    return {
        "update_order_status": update_order_status,
        "policy_info_response": policy_info_response,
        "send_pdf_file": send_pdf_file,
    }
