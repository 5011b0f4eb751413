"""Load drivers: closed loop (N requests, C in flight), fixed rate (open loop), burst.

A request's end-to-end latency runs from the start of its `POST` to the answer that shows it `completed`: with
`prefer_wait`, the POST's own (`Prefer: wait=N`: one request per round trip, as 1C would make it when it wants the
outcome); else, or when that wait ran out (202), the long poll `GET /requests/{id}?wait=` that sees it (see
`Completions`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import orjson

JSON = {"content-type": "application/json"}
POST_ATTEMPTS = 3
FINAL_BAD = ("failed", "dead_lettered")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def latency_summary(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
    }


#: the demo client's credentials (`ESI_ENV=demo` without a clients file, the default): what `make run` accepts
DEMO_AUTH = {"authorization": "Basic ZGVtbzpkZW1v"}


def client(pool: int, base_url: str) -> aiohttp.ClientSession:
    """The load generator's HTTP client: aiohttp alone, the leanest asyncio client at hand. The load generator shares
    the machine's two cores with what it measures: what its client spends, the services cannot use (httpx's cost:
    docs/performance.md)."""
    return aiohttp.ClientSession(
        base_url=base_url,
        timeout=aiohttp.ClientTimeout(total=60.0),
        headers=DEMO_AUTH,
        connector=aiohttp.TCPConnector(limit=pool),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.read()


#: a kept-alive connection the server closed just as it was reused (uvicorn's keep-alive timeout)
CONNECTION_LOST = (aiohttp.ClientConnectionError,)
#: anything else that went wrong on the client's side
CLIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass
class Outcome:
    """What happened to the requests of one run."""

    posted: int = 0
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    post_errors: int = 0
    post_retries: int = 0
    poll_retries: int = 0
    polls: int = 0
    errors: list[str] = field(default_factory=list)
    ingress: list[float] = field(default_factory=list)  # POST → 202, s
    ingress_started: list[float] = field(default_factory=list)  # when each of those POSTs started, perf_counter
    e2e: list[float] = field(default_factory=list)  # POST start → seen completed, s
    #: request id → [POST start, seen final] in wall-clock seconds (for the stage breakdown)
    wall: dict[str, list[float]] = field(default_factory=dict)
    first_post: float | None = None
    last_accepted: float | None = None
    last_completed: float | None = None

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)

    @property
    def all_completed(self) -> bool:
        return self.posted > 0 and self.completed == self.posted


class Completions:
    """Follows each accepted request to its end with long polls (`GET /requests/{id}?wait=`), as 1C would.

    One waiting `GET` per request in flight: the API answers it the moment the request settles, so the latency
    measured is the system's, not a polling interval's, and the API is not loaded with repeated polls. A wait that
    ends unsettled (the server's cap) is simply asked again, until `timeout` after the request's POST.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        outcome: Outcome,
        *,
        on_final: Callable[[], None] = lambda: None,
        timeout: float = 120.0,
        wait: float = 30.0,
    ) -> None:
        self.http = http
        self.outcome = outcome
        self.on_final = on_final
        self.timeout = timeout
        self.wait = wait
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    def add(self, request_id: str, started: float) -> None:
        task = asyncio.create_task(self._follow(request_id, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """No more requests will be added: `run` returns once the ones in flight are final."""
        self._closed.set()

    async def run(self) -> None:
        await self._closed.wait()
        await asyncio.gather(*self._tasks)  # nothing is added after close: these are the last

    async def _follow(self, request_id: str, started: float) -> None:
        outcome = self.outcome
        try:
            while True:
                remaining = started + self.timeout - time.perf_counter()
                if remaining <= 0:
                    outcome.timed_out += 1
                    outcome.error(f"request {request_id} not completed after {self.timeout}s")
                    return
                try:
                    status_code, content = await _call(
                        self.http,
                        "GET",
                        f"/requests/{request_id}",
                        params={"wait": str(round(min(self.wait, remaining), 3))},
                    )
                except CONNECTION_LOST:  # a kept-alive connection closed under it: ask again
                    outcome.poll_retries += 1
                    continue
                except CLIENT_ERRORS as exc:
                    outcome.error(f"GET /requests/{request_id}: {type(exc).__name__}: {exc!r}")
                    await asyncio.sleep(0.25)
                    continue
                now = time.perf_counter()
                outcome.polls += 1
                if status_code != 200:
                    outcome.error(f"GET /requests/{request_id}: HTTP {status_code} {content[:200]!r}")
                    await asyncio.sleep(0.25)
                    continue
                if self._final(request_id, started, now, content):
                    return
        finally:
            self.on_final()

    def settled(self, request_id: str, started: float, now: float, content: bytes) -> None:
        """A request whose POST answered with its outcome (200 to `Prefer: wait=N`)."""
        try:
            if not self._final(request_id, started, now, content):
                self.outcome.error(
                    f"POST for {request_id} answered 200 with a state that is not final: {content[:200]!r}"
                )
        finally:
            self.on_final()

    def _final(self, request_id: str, started: float, now: float, content: bytes) -> bool:
        """Count a request's state as seen at `now`; True if it is final."""
        outcome = self.outcome
        status = orjson.loads(content)["status"]
        if status == "completed":
            outcome.completed += 1
            outcome.e2e.append(now - started)
            outcome.last_completed = now
            wall = outcome.wall.get(request_id)
            if wall is not None:
                wall.append(time.time())
            return True
        if status in FINAL_BAD:
            outcome.failed += 1
            outcome.error(f"request {request_id} ended {status}: {content[:300]!r}")
            return True
        return False


class Driver:
    """Posts create_user requests to the 1C API and follows them to completion."""

    def __init__(
        self, api_url: str, *, tag: str | None = None, completion_timeout: float = 120.0, max_waits: int = 1024
    ) -> None:
        self.api_url = api_url
        #: seconds each closed-loop POST asks to wait for its outcome (`Prefer: wait=N`); 0: POST, then long polls
        self.prefer_wait = 0
        #: connections for the long polls: one per request in flight, up to this many
        self.max_waits = max_waits
        self.tag = tag or uuid.uuid4().hex[:8]
        self.completion_timeout = completion_timeout
        self._seq = 0

    def _body(self) -> tuple[str, bytes]:
        self._seq += 1
        request_id = f"bench-{self.tag}-{self._seq}"
        body = {
            "request_id": request_id,
            "user_id": f"U-{self.tag}-{self._seq}",
            "name": "Иванов Иван",
            "email": f"user{self._seq}@example.com",
            "phone": "+79990000000",
        }
        return request_id, orjson.dumps(body)

    async def _post(
        self,
        http: aiohttp.ClientSession,
        outcome: Outcome,
        tracker: Completions | None,
        scheduled: float | None = None,
        lags: list[float] | None = None,
        prefer_wait: int = 0,
    ) -> bool:
        """POST one request; False if it was not accepted. With `prefer_wait`, a POST answered with the outcome
        (200) is handed to `tracker` as settled, one answered 202 is followed by long polls as without it."""
        request_id, body = self._body()
        headers = {**JSON, "prefer": f"wait={prefer_wait}"} if prefer_wait else JSON
        wall = time.time()
        started = time.perf_counter()
        if outcome.first_post is None:
            outcome.first_post = started
        if scheduled is not None and lags is not None:
            lags.append(started - scheduled)
        outcome.posted += 1
        for attempt in range(1, POST_ATTEMPTS + 1):
            try:
                status_code, content = await _call(http, "POST", "/send_to_dms", data=body, headers=headers)
                break
            except CONNECTION_LOST as exc:
                # a kept-alive connection the server closed just as it was reused (uvicorn's keep-alive timeout):
                # the request carries its request_id, so sending it again is safe — what 1C would do
                if attempt < POST_ATTEMPTS:
                    outcome.post_retries += 1
                    continue
                outcome.post_errors += 1
                outcome.error(f"POST /send_to_dms: {type(exc).__name__}: {exc!r} after {attempt} attempts")
                return False
            except CLIENT_ERRORS as exc:
                outcome.post_errors += 1
                outcome.error(f"POST /send_to_dms: {type(exc).__name__}: {exc!r}")
                return False
        now = time.perf_counter()
        if status_code == 200 and prefer_wait and tracker is not None:
            outcome.accepted += 1
            outcome.wall[request_id] = [wall]
            tracker.settled(request_id, started, now, content)
            return True
        if status_code != 202:
            outcome.post_errors += 1
            outcome.error(f"POST /send_to_dms: HTTP {status_code} {content[:300]!r}")
            return False
        outcome.accepted += 1
        outcome.wall[request_id] = [wall]
        outcome.ingress.append(now - started)
        outcome.ingress_started.append(started)
        outcome.last_accepted = now
        if tracker is not None:
            tracker.add(request_id, started)
        return True

    def _tracker(self, http: aiohttp.ClientSession, outcome: Outcome, on_final: Callable[[], None] = lambda: None):
        return Completions(http, outcome, on_final=on_final, timeout=self.completion_timeout)

    async def closed_loop(self, n: int, concurrency: int) -> tuple[Outcome, float]:
        """`n` requests, at most `concurrency` in flight (posted and not yet seen final). Returns (outcome, seconds)."""
        outcome = Outcome()
        slots = asyncio.Semaphore(concurrency)
        async with client(concurrency, self.api_url) as posts, client(concurrency, self.api_url) as polls:
            tracker = self._tracker(polls, outcome, on_final=slots.release)
            poller = asyncio.create_task(tracker.run())
            pending: set[asyncio.Task[Any]] = set()

            async def one() -> None:
                if not await self._post(posts, outcome, tracker, prefer_wait=self.prefer_wait):
                    slots.release()

            start = time.perf_counter()
            for _ in range(n):
                await slots.acquire()
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            tracker.close()
            await poller
        end = outcome.last_completed or time.perf_counter()
        return outcome, end - start

    async def fixed_rate(self, rate: float, duration: float, *, pool: int = 256) -> tuple[Outcome, dict[str, Any]]:
        """Open loop: one POST every 1/rate seconds for `duration` seconds, whatever the answers; followed to
        completion. Ingress latency is measured from the POST's start and also from the moment it was due."""
        outcome = Outcome()
        n = max(1, int(rate * duration))
        lags: list[float] = []
        from_due: list[float] = []
        async with client(pool, self.api_url) as posts, client(self.max_waits, self.api_url) as polls:
            tracker = self._tracker(polls, outcome)
            poller = asyncio.create_task(tracker.run())
            pending: set[asyncio.Task[Any]] = set()

            async def one(due: float) -> None:
                if await self._post(posts, outcome, tracker, scheduled=due, lags=lags):
                    from_due.append(outcome.ingress[-1] + lags[-1])

            start = time.perf_counter()
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            sent_in = time.perf_counter() - start
            tracker.close()
            await poller
        extra = {
            "achieved_rate_per_s": round(n / sent_in, 1) if sent_in > 0 else None,
            "send_lag_p99_ms": ms(percentile(lags, 99)),
            "send_lag_max_ms": ms(max(lags) if lags else None),
            "from_due": latency_summary(from_due),
        }
        return outcome, extra

    async def burst(self, n: int, *, post_concurrency: int = 64) -> tuple[Outcome, float]:
        """`n` requests posted as fast as `post_concurrency` connections allow, all followed to completion."""
        outcome = Outcome()
        async with (
            client(post_concurrency, self.api_url) as posts,
            client(min(n, self.max_waits), self.api_url) as polls,
        ):
            tracker = self._tracker(polls, outcome)
            poller = asyncio.create_task(tracker.run())
            gate = asyncio.Semaphore(post_concurrency)

            async def one() -> None:
                async with gate:
                    await self._post(posts, outcome, tracker)

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            tracker.close()
            await poller
        end = outcome.last_completed or time.perf_counter()
        return outcome, end - start


async def publish_backlog(amqp_url: str, n: int, *, in_flight: int = 1000, tag: str | None = None) -> float:
    """Publish `n` valid create_user envelopes straight to main_exchange (confirmed); returns the seconds taken."""
    from esi.bus.headers import ATTEMPT_HEADER
    from esi.messages import Envelope

    tag = tag or uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("main_exchange", ensure=False)
        gate = asyncio.Semaphore(in_flight)
        failures: list[BaseException] = []

        async def one(i: int) -> None:
            try:
                envelope = Envelope(
                    request_id=f"backlog-{tag}-{i}",
                    source_system="1c",
                    target_system="dms",
                    message_type="create_user",
                    payload={"user_id": f"B-{tag}-{i}", "name": "Петров Пётр", "email": f"backlog{i}@example.com"},
                )
                message = aio_pika.Message(
                    envelope.encode(),
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=envelope.message_id,
                    correlation_id=envelope.request_id,
                    type="create_user",
                    app_id="esi-bench",
                    headers={ATTEMPT_HEADER: 1},
                )
                await exchange.publish(message, routing_key="1c.request.dms.create_user", mandatory=True, timeout=60)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
            finally:
                gate.release()

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            await gate.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        if failures:
            raise RuntimeError(f"{len(failures)} of {n} backlog publishes failed: {failures[0]!r}")
        return time.perf_counter() - start
    finally:
        await connection.close()
