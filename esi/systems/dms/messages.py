"""Payloads of the messages the DMS (voluntary medical insurance system) answers."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from esi.messages.payload import Payload, Request

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CreateUser(Request):
    """Register a person in the DMS (`1c.request.dms.create_user`)."""

    model_config = _STRICT

    user_id: str = Field(min_length=1, max_length=64, description="the user's id in 1C")
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(default=None, max_length=32)


class UserCreated(Payload):
    """The DMS registered the person (`dms.response.<source>.user_created`)."""

    model_config = ConfigDict(extra="ignore")

    user_id: str
    dms_user_id: str
    name: str
    email: str
    created_at: str | None = None


class GetPolicyInfo(Request):
    """Ask the DMS about an insurance policy (`<source>.request.dms.get_policy_info`)."""

    model_config = _STRICT

    policy_number: str = Field(min_length=1, max_length=64)


class PolicyInfo(Payload):
    """What the DMS knows of a policy (`dms.response.<source>.policy_info_response`)."""

    model_config = ConfigDict(extra="ignore")

    policy_number: str
    holder_name: str
    status: str
    start_date: str
    end_date: str
    insurer: str | None = None
