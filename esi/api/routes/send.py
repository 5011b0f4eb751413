"""Send routes as data: a path that sends one target's requests, with a default message type.

The original system's two endpoints, `POST /send_to_dms` and `POST /send_to_crm`, are `ORIGINAL_SEND_ROUTES`; the
service that runs the API chooses the list (`ApiDeps.send_routes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from esi.messages.crm import UpdateOrderStatus
from esi.messages.dms import CreateUser

__all__ = ["ORIGINAL_SEND_ROUTES", "SendRoute"]


@dataclass(frozen=True)
class SendRoute:
    """`POST <path>` sends a `default_message_type` request to `target`, or the request the body's `message_type`
    names; `body_model` is the default request's payload, for the OpenAPI document."""

    path: str
    target: str
    default_message_type: str
    body_model: type[BaseModel]
    summary: str
    #: the OpenAPI description; a generic one when not given
    description: str | None = None

    @property
    def name(self) -> str:
        """The operation's name: the path's words (`/send_to_dms` → `send_to_dms`)."""
        return self.path.strip("/").replace("/", "_").replace("-", "_")


ORIGINAL_SEND_ROUTES: tuple[SendRoute, ...] = (
    SendRoute("/send_to_dms", "dms", "create_user", CreateUser,
              summary="Send a request to the DMS (default message type: create_user)",
              description="The original system's endpoint; `message_type` in the body picks another DMS request."),
    SendRoute("/send_to_crm", "crm", "update_order_status", UpdateOrderStatus,
              summary="Send a request to the CRM (default message type: update_order_status)",
              description="The original system's endpoint; `message_type` in the body picks another CRM request."),
)
