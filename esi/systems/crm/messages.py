"""Payloads of the messages the CRM (Creatio) answers."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from pydantic import AliasChoices, ConfigDict, Field, model_validator

from esi.messages.payload import Payload, Request

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)
PDF_MAGIC = b"%PDF-"


# The policy as the CRM's answer carries it: the CRM's own model, not the DMS's (a system package imports no
# other's). This answer's contract is the CRM's: a new version of the DMS's payload must not change it behind the
# CRM's back; the CRM maps the DMS's answer onto it (esi.systems.crm.handlers). Its docstring is the contract's text.
class PolicyInfo(Payload):
    """What the DMS knows of a policy (`dms.response.<source>.policy_info_response`)."""

    model_config = ConfigDict(extra="ignore")

    policy_number: str
    holder_name: str
    status: str
    start_date: str
    end_date: str
    insurer: str | None = None


class UpdateOrderStatus(Request):
    """Set an order's status in Creatio (`1c.request.crm.update_order_status`)."""

    model_config = _STRICT

    order_id: str = Field(min_length=1, max_length=64, description="the order's GUID or its Number, e.g. ORD9876")
    status: str = Field(min_length=1, max_length=100, description="the OrderStatus name, e.g. Shipped")
    needs_policy_info: bool = Field(
        default=False,
        description=(
            "ask the DMS about `policy_number` and answer with its policy info; without a policy number (as the "
            "original system's 1C sent it) the status is set and the answer says why there is no policy info"
        ),
    )
    policy_number: str | None = Field(default=None, min_length=1, max_length=64)
    status_changed_at: datetime | None = Field(
        default=None,
        description=(
            "when 1C changed the status (ISO 8601); an update older than the last one applied to the order is not "
            "applied (it completes with applied: false)"
        ),
    )


class OrderStatusUpdated(Payload):
    """Creatio holds the new status (`crm.response.<source>.order_status_updated`)."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    order_guid: str
    order_number: str
    status: str
    status_id: str
    policy_info: PolicyInfo | None = None
    #: false when a newer update of the order had already been applied (this one was superseded)
    applied: bool = True
    #: why there is no policy info although it was asked for, or why the update was not applied
    note: str | None = None


class SendPdfFile(Request):
    """Attach a PDF to an order in Creatio (`1c.request.crm.send_pdf_file`); the file travels base64-encoded."""

    model_config = _STRICT

    order_id: str = Field(min_length=1, max_length=64)
    file_name: str = Field(
        default="document.pdf",
        min_length=1,
        max_length=255,
        pattern=r"^[^/\\\x00-\x1f]+$",
        validation_alias=AliasChoices("file_name", "filename"),
        description="the file's name (the original system's `filename` too)",
    )
    file_content: str = Field(
        min_length=1,
        validation_alias=AliasChoices("file_content", "file_data_base64"),
        description="the PDF, base64-encoded (the original system's `file_data_base64` too)",
    )

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


class PdfReceived(Payload):
    """The PDF is attached to the order (`crm.response.<source>.pdf_received`)."""

    model_config = ConfigDict(extra="ignore")

    order_id: str
    order_guid: str
    file_id: str
    file_name: str
    size: int
    already_attached: bool = False
