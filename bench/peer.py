"""The naive peer: what a user would write instead of esi, FastStream + FastAPI, measured by the same load.

The same flow as esi's `create_user` round trip, in two processes, through the same broker and the same fake DMS:

    api     POST /send_to_dms → publish `1c.request.dms.create_user` to `peer_exchange` and await the reply in memory
            (a future keyed by the request id) → 200 {"status": "completed", ...}
    worker  consumes `peer_dms_queue` → POST /users to the fake DMS → publishes `dms.response.1c.create_user`

No store, no outbox, no inbox, no retries, no dead letters, no validation beyond FastAPI's body model: a request in
flight when a process dies is lost, a redelivery registers twice. What it keeps of a serious setup, so that the
comparison is of esi's guarantees and not of a setting: durable quorum queues and persistent messages, the publisher
confirms FastStream turns on by default, FastAPI's body validation, uvloop, and the HTTP client esi calls the DMS with
underneath (aiohttp: httpx's own connection pool cost the peer's worker a third of its CPU — a choice, not a
guarantee). Per-message log lines are off on both sides (uvicorn's access log; FastStream's "Received"/"Processed"
lines), as esi writes none at its default level.

    python -m bench.peer api --port PORT      python -m bench.peer worker     (PEER_AMQP_URL, PEER_DMS_URL)

A bench-only program (FastStream is a `bench` extra): `bench.run`'s `peer` section starts it on a vhost of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, HTTPException
from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.fastapi import RabbitMessage as RouterMessage
from faststream.rabbit.fastapi import RabbitRouter
from pydantic import BaseModel

EXCHANGE_NAME = "peer_exchange"
REQUESTS = "peer_dms_queue"
REPLIES = "peer_1c_queue"
REPLY_TIMEOUT_S = 30.0


class CreateUser(BaseModel):
    """What 1C posts: the same body esi's `POST /send_to_dms` takes."""

    request_id: str
    user_id: str
    name: str
    email: str
    phone: str | None = None


def _names() -> tuple[RabbitExchange, RabbitQueue, RabbitQueue]:
    exchange = RabbitExchange(EXCHANGE_NAME, type=ExchangeType.TOPIC, durable=True)
    requests = RabbitQueue(REQUESTS, queue_type=QueueType.QUORUM, durable=True, routing_key="*.request.dms.*")
    replies = RabbitQueue(REPLIES, queue_type=QueueType.QUORUM, durable=True, routing_key="*.response.1c.*")
    return exchange, requests, replies


def api_app(amqp_url: str) -> FastAPI:
    """FastAPI with FastStream's router: the handler publishes and awaits the reply in memory."""
    exchange, _, replies = _names()
    router = RabbitRouter(amqp_url, log_level=logging.DEBUG)
    waiting: dict[str, asyncio.Future[Any]] = {}

    @router.subscriber(replies, exchange)
    async def on_reply(body: dict[str, Any], message: RouterMessage) -> None:
        future = waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(body)

    @router.post("/send_to_dms")
    async def send_to_dms(request: CreateUser) -> dict[str, Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[request.request_id] = future
        try:
            await router.broker.publish(
                {
                    "request_id": request.request_id,
                    "message_type": "create_user",
                    "payload": request.model_dump(exclude={"request_id"}, exclude_none=True),
                },
                exchange=exchange,
                routing_key="1c.request.dms.create_user",
                correlation_id=request.request_id,
                persist=True,
            )
            try:
                response = await asyncio.wait_for(future, REPLY_TIMEOUT_S)
            except TimeoutError:
                raise HTTPException(504, "no reply in time") from None
        finally:
            waiting.pop(request.request_id, None)
        return {"request_id": request.request_id, "status": "completed", "response": response}

    app = FastAPI(lifespan=router.lifespan_context)
    app.include_router(router)
    return app


async def worker(amqp_url: str, dms_url: str) -> None:
    """The DMS side: consume a request, call the fake DMS, publish the reply."""
    exchange, requests, _ = _names()
    broker = RabbitBroker(amqp_url, log_level=logging.DEBUG)
    async with aiohttp.ClientSession(base_url=dms_url, timeout=aiohttp.ClientTimeout(total=10)) as http:

        @broker.subscriber(requests, exchange)
        async def create_user(body: dict[str, Any], message: RabbitMessage) -> None:
            payload = body["payload"]
            async with http.post(
                "/users",
                json={"external_id": payload["user_id"], "name": payload["name"], "email": payload["email"]},
                headers={"Idempotency-Key": body["request_id"]},
            ) as answer:
                answer.raise_for_status()
                user = await answer.json()
            await broker.publish(
                {"request_id": body["request_id"], "message_type": "create_user", "payload": user},
                exchange=exchange,
                routing_key="dms.response.1c.create_user",
                correlation_id=message.correlation_id,
                persist=True,
            )

        async with broker:
            await broker.start()
            print("peer worker ready", flush=True)
            await asyncio.Event().wait()  # until terminated


# --- the harness's side -------------------------------------------------------------------------------------------


class PeerSystem:
    """The peer's two processes on a vhost of their own, calling `dms_url` (the fake DMS esi's run uses too)."""

    def __init__(self, *, dms_url: str, workdir: Path, sampler: Any) -> None:
        from esi.testing import Vhost, free_port

        self.vhost = Vhost()
        self.port = free_port()
        self.sampler = sampler
        env = dict(os.environ, PEER_AMQP_URL=self.vhost.url, PEER_DMS_URL=dms_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = {name: workdir / f"{name}.log" for name in ("peer-worker", "peer-api")}
        try:
            for name, args in (("peer-worker", ["worker"]), ("peer-api", ["api", "--port", str(self.port)])):
                with open(self.logs[name], "ab") as log:
                    self.procs[name] = subprocess.Popen(
                        [sys.executable, "-m", "bench.peer", *args],
                        env=env,
                        stdout=log,
                        stderr=log,
                        cwd=Path(__file__).parent.parent,
                    )
                sampler.watch(name, self.procs[name].pid)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail()}")
            worker_ready = "peer worker ready" in self.logs["peer-worker"].read_text(errors="replace")
            try:
                api_ready = httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                api_ready = False
            if worker_ready and api_ready:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the peer did not start within {timeout} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        return " | ".join(f"{n}: {p.read_text(errors='replace')[-chars:]}" for n, p in self.logs.items() if p.exists())

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail()}")

    def close(self) -> None:
        for name, proc in self.procs.items():
            self.sampler.unwatch(name)
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.vhost.delete()


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    amqp_url = os.environ["PEER_AMQP_URL"]
    if argv[:1] == ["api"]:
        import uvicorn

        port = int(argv[argv.index("--port") + 1])
        uvicorn.run(api_app(amqp_url), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    elif argv[:1] == ["worker"]:
        import uvloop

        uvloop.run(worker(amqp_url, os.environ["PEER_DMS_URL"]))
    else:
        raise SystemExit("usage: python -m bench.peer api --port PORT | worker")


if __name__ == "__main__":
    main(sys.argv[1:])
