"""The CRM (Creatio): order statuses and files attached to orders, over OData 4; asks the DMS for policies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from esi.messages.catalog import Upload
from esi.systems.crm.events import ContactChanged, OrderChanged
from esi.systems.crm.messages import PDF_MAGIC, OrderStatusUpdated, PdfReceived, SendPdfFile, UpdateOrderStatus
from esi.systems.crm.settings import CreatioSettings
from esi.systems.crm.tables import MIGRATIONS as TABLES
from esi.systems.spec import Event, Fake, Operation, SendRoute, System, SystemContext

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from fastapi import FastAPI

    from esi.messages import Handler
    from esi.systems.crm.client import CreatioClient


def _client(settings: CreatioSettings) -> CreatioClient:
    from esi.systems.crm.client import client_from

    return client_from(settings)


def _handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.crm.handlers import crm_handlers
    from esi.systems.crm.tables import OrderUpdates

    assert context.client is not None  # noqa: S101 - the system declares a client
    settings = cast(CreatioSettings, context.settings)  # the system's own settings class
    return crm_handlers(
        context.client, max_pdf_bytes=settings.max_pdf_bytes, updates=OrderUpdates(context.store.database)
    )


def _event_handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.crm.handlers import policy_handlers

    assert context.client is not None  # noqa: S101 - the system declares a client
    return policy_handlers(context.client)


def _poll(context: SystemContext) -> Callable[[], Coroutine[Any, Any, None]]:
    """The CRM adapter's background task: the Creatio poller (`CRM_POLL_INTERVAL`; nothing when it is off), the
    backstop of the business process's webhook. Cancelled at the adapter's stop, it releases its leases and closes
    its client."""

    async def poll() -> None:
        from esi.systems.crm.poller import poller_for

        if context.sink is None:
            return
        poller = poller_for(context, context.sink)
        if poller is None:
            return
        try:
            await poller.run_forever()
        finally:
            await poller.stop()

    return poll


def _fake(settings: CreatioSettings) -> FastAPI:
    from esi.systems.crm.fake import create_app
    from esi.systems.crm.fake.state import WebhookTarget

    return create_app(
        username=settings.username,
        password=settings.password.get_secret_value(),
        odata_prefix=settings.odata_path,
        oauth_clients={settings.client_id: settings.client_secret.get_secret_value()},
        token_lifetime_s=settings.fake_token_lifetime,
        webhook=WebhookTarget(
            url=settings.fake_webhook_url,
            user=settings.fake_webhook_user or "",
            password=settings.fake_webhook_password or "",
        ),
    )


PDF = Upload(
    content_field="file_content",
    name_field="file_name",
    magic=PDF_MAGIC,
    media_type="application/pdf",
    default_name="document.pdf",
)

SYSTEM = System(
    code="crm",
    title="Creatio",
    description="the CRM: order statuses, files attached to orders",
    answers=(
        Operation("update_order_status", UpdateOrderStatus, "order_status_updated", OrderStatusUpdated),
        Operation("send_pdf_file", SendPdfFile, "pdf_received", PdfReceived, upload=PDF),
    ),
    asks=("get_policy_info",),
    settings=CreatioSettings,
    client=_client,
    handlers=_handlers,
    health_name="creatio",
    tables=TABLES,
    fake=Fake("fake-creatio", _fake),
    key_fields=("order_id", "order_number", "order_guid", "file_id", "policy_number"),
    # the DMS's policies, written to Creatio's UsrPolicy object (docs/creatio.md)
    subscribes=("dms.policy_issued", "dms.policy_changed", "dms.policy_cancelled"),
    on_event=_event_handlers,
    background=_poll,
    # what a Creatio business process (or the poller) hands in: Creatio's Id and ModifiedOn are identity and version
    emits=(
        Event(
            "order_changed",
            OrderChanged,
            id_field="Id",
            version_field="ModifiedOn",
            entity="order",
            key_fields=("Number",),
        ),
        Event(
            "contact_changed",
            ContactChanged,
            id_field="Id",
            version_field="ModifiedOn",
            entity="contact",
            key_fields=("Email", "Phone"),
        ),
    ),
    send_routes=(
        SendRoute(
            "/send_to_crm",
            "crm",
            "update_order_status",
            UpdateOrderStatus,
            summary="Send a request to the CRM (default message type: update_order_status)",
            description="The original system's endpoint; `message_type` in the body picks another CRM request.",
        ),
    ),
)
