"""The test and operations endpoints every fake server has, written once.

- `GET /_fake/state` — everything the fake holds (its `state()`).
- `POST /_fake/reset` — back to the seed (its `reset()`), answered with the state after it.
- `POST /_fake/faults` — arm or clear a fault (`esi.fakes.faults`), applied to every path outside `/_fake`.

A fake adds its own `/_fake/*` endpoints beside these (Creatio: expire sessions, add orders; DMS: add policies).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig

from esi.fakes.faults import Faults, install

#: FastAPI's OpenTelemetry hooks, off in every fake: a fake is measured by its own counters (`/_fake/state`), and
#: the hooks cost CPU on every call of a benchmark
TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


class Fake(Protocol):
    """What a fake's state offers its controls."""

    faults: Faults

    def state(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def install_controls(app: FastAPI, fake: Fake) -> None:
    """Add `/_fake/state`, `/_fake/reset` and `/_fake/faults` to `app`, and the fault middleware to its other paths
    (before the app starts: Starlette takes no middleware after that)."""

    @app.get("/_fake/state")
    async def state() -> JSONResponse:
        """Everything the fake holds: its data, counters and the armed fault."""
        return JSONResponse(fake.state())

    @app.post("/_fake/reset")
    async def reset() -> JSONResponse:
        """Back to the seed: data, counters and faults."""
        fake.reset()
        return JSONResponse(fake.state())

    install(app, fake.faults)
