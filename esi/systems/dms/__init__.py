"""The DMS (voluntary medical insurance system): registers people and answers about their policies, over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esi.systems.dms.events import PolicyCancelled, PolicyChanged, PolicyIssued
from esi.systems.dms.messages import CreateUser, GetPolicyInfo, PolicyInfo, UserCreated
from esi.systems.dms.settings import DmsSettings
from esi.systems.spec import Event, Fake, Operation, SendRoute, System, SystemContext

if TYPE_CHECKING:
    from fastapi import FastAPI

    from esi.messages import Handler
    from esi.systems.dms.client import DmsClient


def _client(settings: DmsSettings) -> DmsClient:
    from esi.systems.dms.client import DmsClient

    return DmsClient(
        base_url=settings.url,
        api_key=settings.secret(settings.api_key),
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        max_connections=settings.max_concurrency,
    )


def _handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.dms.handlers import dms_handlers

    assert context.client is not None  # noqa: S101 - the system declares a client
    return dms_handlers(context.client)


def _fake(settings: DmsSettings) -> FastAPI:
    from esi.systems.dms.fake import create_app

    return create_app(
        api_key=settings.secret(settings.api_key),
        webhook_url=settings.fake_webhook_url,
        webhook_secret=settings.secret(settings.webhook_secret),
    )


def _policy(event_type: str, model: type[PolicyIssued | PolicyChanged | PolicyCancelled]) -> Event:
    return Event(
        event_type,
        model,
        id_field="policy_number",
        version_field="revision",
        entity="policy",
        key_fields=("policy_number", "user_id", "order_number"),
    )


SYSTEM = System(
    code="dms",
    title="DMS",
    description="voluntary medical insurance: users and policies",
    answers=(
        Operation("create_user", CreateUser, "user_created", UserCreated),
        Operation("get_policy_info", GetPolicyInfo, "policy_info_response", PolicyInfo),
    ),
    settings=DmsSettings,
    client=_client,
    handlers=_handlers,
    fake=Fake("fake-dms", _fake),
    key_fields=("user_id", "dms_user_id", "policy_number"),
    emits=(
        _policy("policy_issued", PolicyIssued),
        _policy("policy_changed", PolicyChanged),
        _policy("policy_cancelled", PolicyCancelled),
    ),
    # the DMS signs its webhook with a shared secret (DMS_WEBHOOK_SECRET)
    event_auth="signed",
    send_routes=(
        SendRoute(
            "/send_to_dms",
            "dms",
            "create_user",
            CreateUser,
            summary="Send a request to the DMS (default message type: create_user)",
            description="The original system's endpoint; `message_type` in the body picks another DMS request.",
        ),
    ),
)
