"""1C:Enterprise, the origin: it sends requests over esi's HTTP API and reads their outcome; every reply comes
back to its queue, where its adapter records it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esi.systems.spec import System, SystemContext

if TYPE_CHECKING:
    from esi.messages import Handler


def _handlers(context: SystemContext) -> dict[str, Handler]:
    from esi.systems.onec.handlers import onec_handlers

    return onec_handlers(context)


SYSTEM = System(
    code="1c",
    title="1C:Enterprise",
    description="the ERP: sends requests over the HTTP API, receives every answer",
    service_name="onec",
    handlers=_handlers,
    origin=True,
    # the 1C side only records answers, which is idempotent by nature: no inbox to consult or write
    inbox=False,
)
