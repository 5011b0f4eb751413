"""The events the DMS emits when a policy is issued, changed or cancelled (`dms.event.policy_issued`, ...), sent by
its signed webhook (`POST /events/dms/{type}`, docs/events.md). The policy's number and revision are the event's
identity and version; the three share one order per policy (a cancellation of revision 3 is never overtaken by the
issue of revision 1).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PolicyEvent(BaseModel):
    """A policy as the DMS holds it after the change, with its revision."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    policy_number: str = Field(min_length=1, max_length=64)
    revision: int = Field(ge=1, description="the DMS's revision of the policy: higher is newer")
    status: Literal["active", "expired", "suspended", "cancelled"]
    holder_name: str | None = Field(None, max_length=250)
    user_id: str | None = Field(None, max_length=64, description="the 1C user the policy covers, when known")
    order_number: str | None = Field(None, max_length=64, description="the CRM order it was sold with, when known")
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    insurer: str | None = None


class PolicyIssued(PolicyEvent):
    """The DMS issued a policy: `dms.event.policy_issued`."""


class PolicyChanged(PolicyEvent):
    """A policy's holder, dates or status changed: `dms.event.policy_changed`."""


class PolicyCancelled(PolicyEvent):
    """A policy was cancelled: `dms.event.policy_cancelled`."""
