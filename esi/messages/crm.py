"""Payloads of the messages the CRM (Creatio) answers."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, model_validator

from esi.messages.dms import PolicyInfo

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)
PDF_MAGIC = b"%PDF-"


class UpdateOrderStatus(BaseModel):
    """Set an order's status in Creatio (`1c.request.crm.update_order_status`)."""

    model_config = _STRICT

    order_id: str = Field(min_length=1, max_length=64, description="the order's GUID or its Number, e.g. ORD9876")
    status: str = Field(min_length=1, max_length=100, description="the OrderStatus name, e.g. Shipped")
    needs_policy_info: bool = False
    policy_number: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _policy_number_when_needed(self) -> UpdateOrderStatus:
        if self.needs_policy_info and not self.policy_number:
            raise ValueError("policy_number is required when needs_policy_info is true")
        return self


class OrderStatusUpdated(BaseModel):
    """Creatio holds the new status (`crm.response.<source>.order_status_updated`)."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    order_guid: str
    order_number: str
    status: str
    status_id: str
    policy_info: PolicyInfo | None = None


class SendPdfFile(BaseModel):
    """Attach a PDF to an order in Creatio (`1c.request.crm.send_pdf_file`); the file travels base64-encoded."""

    model_config = _STRICT

    order_id: str = Field(min_length=1, max_length=64)
    file_name: str = Field(default="document.pdf", min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$")
    file_content: str = Field(min_length=1, description="the PDF, base64-encoded")

    def pdf_bytes(self) -> bytes:
        return base64.b64decode(self.file_content, validate=True)

    @model_validator(mode="after")
    def _is_pdf(self) -> SendPdfFile:
        try:
            head = base64.b64decode(self.file_content[:12], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("file_content is not valid base64") from None
        if not head.startswith(PDF_MAGIC):
            raise ValueError("file_content is not a PDF (it does not start with %PDF-)")
        return self


class PdfReceived(BaseModel):
    """The PDF is attached to the order (`crm.response.<source>.pdf_received`)."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    order_guid: str
    file_id: str
    file_name: str
    size: int
    already_attached: bool = False
