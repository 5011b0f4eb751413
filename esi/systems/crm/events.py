"""The events Creatio emits, with Creatio's own column names as its business process maps them (docs/creatio.md):
`crm.event.order_changed`, `crm.event.contact_changed`. The webhook (`POST /events/crm/{type}`) and the poller
hand the same shape in; the record's `Id` and `ModifiedOn` are the event's identity and version.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

_GUIDISH = r"^[0-9A-Za-z][0-9A-Za-z\-]{0,63}$"


class OrderChanged(BaseModel):
    """An order changed in Creatio (a manager set its status, say): `crm.event.order_changed`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    id: str = Field(alias="Id", pattern=_GUIDISH, description="the order's Id (a GUID)")
    number: str = Field(alias="Number", min_length=1, max_length=64, description="the order's number (ORD9876)")
    status: str = Field(alias="Status", min_length=1, max_length=250, description="the Name of its OrderStatus")
    modified_on: datetime = Field(alias="ModifiedOn", description="Creatio's ModifiedOn (ISO 8601, UTC)")
    amount: float | None = Field(None, alias="Amount", description="the order's amount")


class ContactChanged(BaseModel):
    """A contact changed in Creatio: `crm.event.contact_changed`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, str_strip_whitespace=True)

    id: str = Field(alias="Id", pattern=_GUIDISH, description="the contact's Id (a GUID)")
    name: str = Field(alias="Name", min_length=1, max_length=250)
    email: str | None = Field(None, alias="Email", max_length=250)
    phone: str | None = Field(None, alias="Phone", max_length=250)
    modified_on: datetime = Field(alias="ModifiedOn", description="Creatio's ModifiedOn (ISO 8601, UTC)")
