"""Fault injection shared by the fake servers.

`POST /_fake/faults` with `{"status": 503, "rate": 1.0, "count": 3, "latency_ms": 200, "duration_s": 60,
"retry_after": 3}` — every field optional: answer `status` to that fraction (`rate`, default 1.0) of calls, for the
next `count` calls or `duration_s` seconds (default: until cleared), after waiting `latency_ms`, with a `Retry-After`
header of `retry_after` seconds when given. `{"reset_after_work": true, "rate": 0.5}` instead lets the call do its
work and then drops the connection in the middle of the answer (its status line and headers sent, the body never):
the effect happened, the caller cannot know it — a load balancer or a network failing at the worst moment. `{}`
clears every fault. Only the fake's business endpoints are affected, never `/_fake/*`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send


class FaultSpec(BaseModel):
    """What `POST /_fake/faults` accepts."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=100, le=599)
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=0)
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    #: the fault lifts by itself this long after it was armed (an outage of a known length)
    duration_s: float | None = Field(default=None, gt=0, le=86_400)
    #: sent as `Retry-After` with the injected status
    retry_after: int | None = Field(default=None, ge=0, le=86_400)
    #: do the work, then drop the connection before the answer's body (instead of answering `status`)
    reset_after_work: bool = False


@dataclass
class Decision:
    """What one call gets from the armed fault: a delay first, then a status instead of the answer (None: none)."""

    latency_s: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    #: do the work, then drop the connection in the middle of the answer
    reset: bool = False


class Faults:
    """The fault currently armed on one fake server."""

    def __init__(self) -> None:
        self.spec: FaultSpec | None = None
        self.remaining: int | None = None
        self.until: float | None = None
        #: how many calls a fault answered with its status (tests read it back through /_fake/state)
        self.injected = 0
        #: wall-clock times (epoch seconds) of the latest business calls, faulted or not: tests check retry spacing
        self.call_times: deque[float] = deque(maxlen=2000)
        self._rng = random.Random(1234)  # noqa: S311 - a seeded fake's fault dice, not a secret

    def arm(self, spec: FaultSpec) -> None:
        """Arm `spec` in place of any fault armed before (a spec without status or latency clears)."""
        empty = spec.status is None and spec.latency_ms == 0 and not spec.reset_after_work
        self.spec = None if empty else spec
        self.remaining = spec.count
        self.until = time.monotonic() + spec.duration_s if spec.duration_s else None
        self._rng = random.Random(1234)  # noqa: S311 - a seeded fake's fault dice, not a secret

    def clear(self) -> None:
        """Disarm; the counts of what was injected stay."""
        self.spec = None
        self.remaining = None
        self.until = None

    def reset(self) -> None:
        """Disarm and forget what was injected and when calls came (a fake's `/_fake/reset`)."""
        self.clear()
        self.injected = 0
        self.call_times.clear()

    def decide(self) -> Decision:
        """Consume one call's worth of the armed fault."""
        self.call_times.append(time.time())
        spec = self.spec
        if spec is None:
            return Decision()
        if self.until is not None and time.monotonic() >= self.until:
            self.clear()
            return Decision()
        if self.remaining is not None:
            if self.remaining <= 0:
                self.clear()
                return Decision()
            self.remaining -= 1
        hit = self._rng.random() < spec.rate
        status = spec.status if spec.status is not None and hit else None
        reset = spec.reset_after_work and status is None and hit
        if status is not None or reset:
            self.injected += 1
        if self.remaining == 0:
            self.clear()
        return Decision(latency_s=spec.latency_ms / 1000.0, status=status, retry_after=spec.retry_after, reset=reset)

    def state(self) -> dict[str, Any]:
        """The armed fault, its remaining count, how many calls it answered and when calls came."""
        return {
            "armed": self.spec.model_dump() if self.spec else None,
            "remaining": self.remaining,
            "injected": self.injected,
            "call_times": list(self.call_times),
        }


def fault_response(status: int, retry_after: int | None = None) -> Response:
    """The body a fake answers an injected fault with."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": "injected fault", "status": status}, status_code=status, headers=headers)


class FaultMiddleware:
    """Applies the armed fault to every call outside `protected_prefix` (pure ASGI).

    A plain ASGI middleware, not `@app.middleware("http")`: Starlette's `BaseHTTPMiddleware` runs each request
    through a task group and memory streams, a large share of the fakes' CPU in the benchmark, where they share the
    machine with what is measured (docs/performance.md).
    """

    def __init__(self, app: ASGIApp, *, faults: Faults, protected_prefix: str = "/_fake") -> None:
        self.app = app
        self.faults = faults
        self.protected_prefix = protected_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.protected_prefix):
            await self.app(scope, receive, send)
            return
        decision = self.faults.decide()
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.status is not None:
            await fault_response(decision.status, decision.retry_after)(scope, receive, send)
            return
        if decision.reset:
            await self.app(scope, receive, _headers_only(send))
            # the work is done and the status line and headers are out: failing now makes the server close the
            # connection with the body promised by Content-Length unsent
            raise AnswerDropped(scope["path"])
        await self.app(scope, receive, send)


class AnswerDropped(Exception):
    """Raised by the fault middleware after a call's work to drop the connection in the middle of its answer."""


def _headers_only(send: Send) -> Send:
    """`send` that passes the answer's start (status, headers) and swallows its body."""

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            await send(message)

    return wrapped


def install(app: FastAPI, faults: Faults, *, protected_prefix: str = "/_fake") -> None:
    """Add the `/_fake/faults` endpoint and a middleware applying the armed fault to every other path."""
    router = APIRouter()

    @router.post("/_fake/faults")
    async def set_faults(spec: FaultSpec) -> dict[str, Any]:
        faults.arm(spec)
        return faults.state()

    app.include_router(router)
    app.add_middleware(FaultMiddleware, faults=faults, protected_prefix=protected_prefix)
