"""A fake 1C HTTP service (demo and tests): what docs/1c.md tells 1C to build, played by esi.

- `POST /messages` — a message pushed by esi (header `X-Esi-Message-Id`): recorded once, a repeat of the same id is
  answered `208 Already Reported` without being recorded again (as the BSL handler deduplicates);
  `ONEC_USERNAME`/`ONEC_PASSWORD` set: HTTP Basic required, as a 1C user.
- `GET /ping` — readiness (what esi's `/readyz` calls).
- `POST /_fake/answer-delay` `{"ms": 300}` — record each message at once but answer it that much later (a 1C that
  is slow to answer: a sender killed meanwhile sends it again, with the same id).
- `GET /_fake/state` — `{"received": [{message_id, type, source, key, version, body, at}, ...], "repeats": n,
  "posts": n, ...}`, `POST /_fake/reset`, `POST /_fake/faults` (`esi.fakes`: a 503 for 10 s, say).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from esi.fakes.controls import TELEMETRY_OFF, install_controls
from esi.fakes.faults import Faults

MESSAGE_ID_HEADER = "X-Esi-Message-Id"


class FakeOnec:
    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.faults = Faults()
        self._credentials = f"{username}:{password or ''}".encode() if username else None
        self.reset()

    def reset(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.posts = 0
        self.repeats = 0
        self.answer_delay_s = 0.0
        self.faults.reset()

    def authorized(self, header: str | None) -> bool:
        if self._credentials is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self._credentials)

    def take(self, message_id: str, body: dict[str, Any]) -> bool:
        """Record a message once; False for a repeat of an id already held."""
        self.posts += 1
        if message_id in self.seen:
            self.seen[message_id] += 1
            self.repeats += 1
            return False
        self.seen[message_id] = 1
        self.received.append(
            {
                "message_id": message_id,
                "type": body.get("type"),
                "source": body.get("source"),
                "key": body.get("key"),
                "version": body.get("version"),
                "body": body,
                "at": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
        )
        return True

    def state(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "posts": self.posts,
            "repeats": self.repeats,
            "faults": {"injected": self.faults.injected},
        }


def create_app(*, username: str | None = None, password: str | None = None) -> FastAPI:
    """The fake 1C HTTP service; its state is `app.state.fake` (a `FakeOnec`)."""
    fake = FakeOnec(username=username, password=password)
    app = FastAPI(
        title="Fake 1C HTTP service", docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY_OFF
    )
    app.state.fake = fake

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/messages")
    async def messages(request: Request) -> JSONResponse:
        if not fake.authorized(request.headers.get("authorization")):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        message_id = request.headers.get(MESSAGE_ID_HEADER, "").strip()
        if not message_id:
            return JSONResponse({"error": f"the {MESSAGE_ID_HEADER} header is required"}, status_code=400)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        new = fake.take(message_id, body)
        if fake.answer_delay_s:
            await asyncio.sleep(fake.answer_delay_s)
        if new:
            return JSONResponse({"status": "recorded"}, status_code=201)
        return JSONResponse({"status": "duplicate"}, status_code=208)

    @app.post("/_fake/answer-delay")
    async def answer_delay(request: Request) -> dict[str, float]:
        body = await request.json()
        fake.answer_delay_s = max(0.0, float(body.get("ms", 0))) / 1000
        return {"answer_delay_s": fake.answer_delay_s}

    install_controls(app, fake)
    return app
