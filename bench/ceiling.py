"""The yardstick of every throughput esi quotes: bare aio-pika request/reply round trips on this machine.

A requester publishes `n` persistent requests with publisher confirms, at most `concurrency` of them awaiting their
reply, to a durable queue; a responder in a process of its own consumes each (manual ack), publishes a persistent,
confirmed reply to the requester's reply queue and then acks; the requester consumes the replies. That is the least
any RabbitMQ request/response bus does per round trip, with no store, no validation and no external call, so esi's
end-to-end figures are quoted as a ratio of it, measured in the same run (`bench.run`).

    python -m bench.ceiling [N] [CONCURRENCY] [classic|quorum]     (AMQP_URL names the broker and vhost)

It prints one JSON line: n, concurrency, queue_type, seconds, round_trips_per_s, p50_ms, p99_ms, and the CPU per
round trip of the requester and the responder (`cpu_ms_per_round_trip`, their sum: what `bench.run` divides each
esi process's CPU per request by, so that figures from different machines compare).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
PREFETCH = 256
#: what each request carries: a create_user of the original system's size
SAMPLE_PAYLOAD = {"user_id": "U12345", "name": "Иванов Иван", "email": "ivanov@example.com"}


def _queue_names(queue_type: str, tag: str) -> tuple[str, str]:
    return f"bench_ceiling_requests_{queue_type}_{tag}", f"bench_ceiling_replies_{queue_type}_{tag}"


async def _respond(url: str, queue_type: str, tag: str, ready: Any) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    requests, _ = _queue_names(queue_type, tag)
    queue = await channel.declare_queue(requests, durable=True, arguments={"x-queue-type": queue_type})

    async def answer(message: AbstractIncomingMessage) -> None:
        request = json.loads(message.body)
        reply = json.dumps({"request_id": request["request_id"], "ok": True}).encode()
        # the reply is confirmed before the request is acked: the same order as any no-loss consumer
        await channel.default_exchange.publish(
            aio_pika.Message(reply, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=message.reply_to or ""
        )
        await message.ack()

    await queue.consume(answer)
    ready.set()
    await asyncio.Future()  # until the requester terminates this process


def _responder_main(url: str, queue_type: str, tag: str, ready: Any) -> None:
    asyncio.run(_respond(url, queue_type, tag, ready))


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (/proc), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _request(
    url: str, n: int, concurrency: int, queue_type: str, tag: str, responder_pid: int | None = None
) -> dict[str, Any]:
    connection = await aio_pika.connect(url)
    try:
        publish_channel = await connection.channel(publisher_confirms=True)
        reply_channel = await connection.channel()
        await reply_channel.set_qos(prefetch_count=PREFETCH)
        requests, replies = _queue_names(queue_type, tag)
        reply_queue = await reply_channel.declare_queue(replies, durable=True, arguments={"x-queue-type": queue_type})
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        slots = asyncio.Semaphore(concurrency)
        finished = asyncio.Event()
        publishes: set[asyncio.Task[Any]] = set()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            request_id = json.loads(message.body)["request_id"]
            latencies.append(time.perf_counter() - sent_at.pop(request_id))
            await message.ack()
            slots.release()
            if len(latencies) == n:
                finished.set()

        await reply_queue.consume(on_reply)
        started = time.perf_counter()
        own_cpu0 = time.process_time()
        their_cpu0 = _cpu_s(responder_pid) if responder_pid else None
        for _ in range(n):
            await slots.acquire()
            request_id = uuid.uuid4().hex
            body = json.dumps({"request_id": request_id, "payload": SAMPLE_PAYLOAD}).encode()
            sent_at[request_id] = time.perf_counter()
            # confirms are awaited by many publishes at once, as a real publisher keeps them in flight
            task = asyncio.create_task(
                publish_channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, reply_to=replies),
                    routing_key=requests,
                )
            )
            publishes.add(task)
            task.add_done_callback(publishes.discard)
        await finished.wait()
        elapsed = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu0
        their_cpu1 = _cpu_s(responder_pid) if responder_pid else None
        their_cpu = their_cpu1 - their_cpu0 if their_cpu0 is not None and their_cpu1 is not None else None
        latencies.sort()
        cleanup = await connection.channel()
        for name in (requests, replies):
            await cleanup.queue_delete(name, if_unused=False, if_empty=False)
        return {
            "n": n,
            "concurrency": concurrency,
            "queue_type": queue_type,
            "seconds": round(elapsed, 3),
            "round_trips_per_s": round(n / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
            "requester_cpu_ms": round(1000 * own_cpu / n, 3),
            "responder_cpu_ms": round(1000 * their_cpu / n, 3) if their_cpu is not None else None,
            "cpu_ms_per_round_trip": round(1000 * (own_cpu + their_cpu) / n, 3) if their_cpu is not None else None,
        }
    finally:
        await connection.close()


def measure(url: str, n: int, concurrency: int, queue_type: str = "quorum") -> dict[str, Any]:
    """Run the responder in a process of its own and the requester here; the figures of the run."""
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"queue type must be classic or quorum, not {queue_type!r}")
    tag = uuid.uuid4().hex[:8]
    context = multiprocessing.get_context("spawn")  # no event loop or socket inherited from this process
    ready = context.Event()
    responder = context.Process(target=_responder_main, args=(url, queue_type, tag, ready), daemon=True)
    responder.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the ceiling's responder did not start within 60 s")
        return asyncio.run(_request(url, n, concurrency, queue_type, tag, responder.pid))
    finally:
        responder.terminate()
        responder.join(10)


def main(argv: list[str]) -> None:
    n = int(argv[0]) if len(argv) > 0 else 20_000
    concurrency = int(argv[1]) if len(argv) > 1 else 64
    queue_type = argv[2] if len(argv) > 2 else "quorum"
    print(json.dumps(measure(os.environ.get("AMQP_URL", DEFAULT_URL), n, concurrency, queue_type)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
