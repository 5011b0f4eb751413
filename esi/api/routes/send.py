"""Send routes as data: a path that sends one target's requests, with a default message type.

Each system declares its own (`esi.systems.spec.SendRoute`, e.g. the original system's `POST /send_to_dms`); the
service that runs the API passes the registry's (`ApiDeps.send_routes`). `ORIGINAL_SEND_ROUTES` are the built-in
systems' two.
"""

from __future__ import annotations

from esi.systems.builtin import BUILT_IN
from esi.systems.spec import SendRoute

__all__ = ["ORIGINAL_SEND_ROUTES", "SendRoute"]

ORIGINAL_SEND_ROUTES: tuple[SendRoute, ...] = tuple(route for system in BUILT_IN for route in system.send_routes)
