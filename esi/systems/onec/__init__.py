"""1C:Enterprise, the origin: it sends requests over esi's HTTP API and reads their outcome; every reply comes
back to its queue, where its adapter records it. It subscribes to events too (orders changed in Creatio, policies
of the DMS): each is pushed to its HTTP service or kept in its pull feed (`ONEC_DELIVERY`, docs/1c.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esi.systems.onec.handlers import RequestOutcome
from esi.systems.onec.settings import OnecSettings
from esi.systems.spec import Event, Fake, System, SystemContext

if TYPE_CHECKING:
    from fastapi import FastAPI

    from esi.messages import Handler
    from esi.systems.onec.client import OnecClient


def _handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.onec.handlers import onec_handlers

    return onec_handlers(context)


def _event_handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.onec.delivery import event_handlers

    return event_handlers(context)


def _client(settings: OnecSettings) -> OnecClient:
    from esi.systems.onec.client import OnecClient

    return OnecClient(
        base_url=settings.url,
        username=settings.username,
        password=settings.secret(settings.password),
        timeout=settings.timeout,
        ca_bundle=settings.ca_bundle,
        max_connections=settings.max_concurrency,
        push=settings.delivery == "push",
    )


def _fake(settings: OnecSettings) -> FastAPI:
    from esi.systems.onec.fake import create_app

    return create_app(username=settings.username, password=settings.secret(settings.password))


SYSTEM = System(
    code="1c",
    title="1C:Enterprise",
    description="the ERP: sends requests over the HTTP API, receives every answer",
    service_name="onec",
    handlers=_handlers,
    origin=True,
    # the 1C side only records answers, which is idempotent by nature: no inbox to consult or write
    inbox=False,
    settings=OnecSettings,
    # the client pushes to 1C's HTTP service: only the events queue calls it (its breaker pauses that one alone)
    client=_client,
    fake=Fake("fake-1c", _fake),
    # the outcome of a request of 1C, when the request asked for it (X-Esi-Notify: outcome): polling goes on as before
    emits=(
        Event("request_outcome", RequestOutcome, id_field="request_id", version_field="revision", entity="request"),
    ),
    subscribes=(
        "1c.request_outcome",
        "crm.order_changed",
        "dms.policy_issued",
        "dms.policy_changed",
        "dms.policy_cancelled",
    ),
    on_event=_event_handlers,
)
