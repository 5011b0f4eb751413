"""The chaos run's workload: every flow at a steady rate, sent as 1C sends them.

A flow is a small class (`Flow`): how to make its n-th request (`make`), and how to check, after the run, the effects
its requests had at the fakes (`check`). Adding a flow — the events of another system, say — is one more class in
`FLOWS` (or passed to `Workload`), nothing else.

1C's behaviour, per request (a `Mode` drawn from the seed):

    fire      post until a definite answer (a broken connection, a timeout, 5xx or 429: the same body again,
              to the next API process, as 1C's exchange does), then leave it
    wait      the same with `Prefer: wait=15` (the answer may be the outcome itself)
    poll      then `GET /requests/{id}?wait=5` until the outcome
    repeat    then the same request again, a little later: must be answered as the first (not 409)
    conflict  then the same request_id with a changed body: must be answered 409

A flow names the behaviours that fit it (`Flow.modes`: an event, say, has no outcome to wait for or poll), the headers
of each post (`Flow.headers`: a signed webhook signs every post anew), how a repeat must be answered
(`Flow.repeat_violation`), and whether esi keeps a request record of its items (`Sent.record`: an event has none;
its flow checks its own liveness).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

#: the share of each 1C behaviour
MODES: dict[str, float] = {"fire": 0.40, "wait": 0.15, "poll": 0.20, "repeat": 0.15, "conflict": 0.10}
#: a post with no definite answer for this long is given up (its request is "indeterminate": an effect may or may not
#: exist; the checker allows at most one)
POST_GIVE_UP_S = 150.0
FINAL = ("completed", "failed", "dead_lettered")


@dataclass
class Sent:
    """One request of the workload and everything the client saw of it."""

    request_id: str
    flow: str
    path: str
    body: dict[str, Any]
    mode: str
    #: what the request must end as: "completed", or "failed" for a request refused by design
    expect: str = "completed"
    headers: dict[str, str] = field(default_factory=dict)
    sent_at: float = 0.0
    #: the first 2xx answer's time (None: never accepted)
    accepted_at: float | None = None
    #: the status codes of every answer, in order ("err" for a transport error)
    answers: list[str] = field(default_factory=list)
    #: a finding of the client's own (a repeat answered 409, a conflict not refused, ...)
    client_violation: str | None = None
    #: the outcome seen by the client (Prefer: wait, polling), when it saw one
    seen_final: dict[str, Any] | None = None
    done_at: float = 0.0
    #: whether esi keeps a request record of it (`GET /requests/{id}`, the store's finals): an event has none, its
    #: flow's `check` proves it arrived
    record: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None

    @property
    def indeterminate(self) -> bool:
        """Never answered for sure: it may have been accepted."""
        return not self.accepted and not any(a.startswith("4") for a in self.answers)


@dataclass
class Violation:
    check: str
    detail: str
    request_id: str | None = None


class Flow:
    """One kind of request: its share of the traffic, how to make one, and how to check their effects."""

    name: ClassVar[str]
    weight: ClassVar[float] = 1.0
    #: the 1C behaviours that fit this flow and their shares (None: every one of `MODES`)
    modes: ClassVar[dict[str, float] | None] = None

    def setup(self, ctx: Context) -> None:
        """Before the run (the fakes are up): create what the requests need."""

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        raise NotImplementedError

    def changed(self, sent: Sent) -> dict[str, Any]:
        """The body of a conflicting repeat: the same request_id, something else changed."""
        return {**sent.body, "comment": "changed"}

    def headers(self, ctx: Context, sent: Sent, content: bytes) -> dict[str, str]:
        """The headers of one post of `content` (every post, every retry: a signature with a fresh timestamp, say)."""
        return {}

    def repeat_violation(self, sent: Sent, again: httpx.Response) -> str | None:
        """What is wrong with the answer to a repeat of an accepted request (None: nothing)."""
        if again.status_code >= 300:
            return f"a repeat was answered {again.status_code}: {again.text[:200]}"
        if _json(again).get("request_id") != sent.request_id:
            return f"a repeat was answered for another request: {again.text[:200]}"
        return None

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        """The effects of this flow's requests at the fakes, after the run drained."""
        return []

    def stats(self) -> dict[str, Any]:
        """What the check counted, for the report (after `check`)."""
        return {}


@dataclass
class Context:
    """What flows share: the run's tag (every id carries it), the fakes' URLs and the workload's clock."""

    tag: str
    fake_urls: dict[str, str]
    orders: list[str] = field(default_factory=list)
    #: the DMS's webhook secret (DMS_WEBHOOK_SECRET of the API processes): the DMS's events are signed with it
    dms_webhook_secret: str = ""
    #: what the store holds of the run's events (`checker.event_store`), read after the run drained
    store_events: dict[str, Any] = field(default_factory=dict)
    _clock: int = 0

    def status_time(self) -> str:
        """A strictly increasing `status_changed_at`: 1C's own clock of each change."""
        self._clock += 1
        base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self._clock)
        return base.isoformat()

    def fake_state(self, code: str) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"{self.fake_urls[code]}/_fake/state", timeout=30).json()
        return state


class CreateUser(Flow):
    """create_user: one user at the DMS per accepted request; a twentieth refused by the DMS by design."""

    name = "create_user"
    weight = 3.0

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        refused = rng.random() < 0.05
        body = {
            "request_id": request_id,
            "user_id": f"U-{request_id}",
            "name": f"Хаос {request_id[-6:]}",
            "email": f"{request_id.lower()}@{'refused.example' if refused else 'example.com'}",
        }
        return Sent(request_id, self.name, "/send_to_dms", body, "", expect="failed" if refused else "completed")

    def changed(self, sent: Sent) -> dict[str, Any]:
        return {**sent.body, "name": "Другое Имя"}

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        users: dict[str, list[dict[str, Any]]] = {}
        for user in ctx.fake_state("dms")["users"]:
            if user["external_id"].startswith(f"U-CH-{ctx.tag}-"):
                users.setdefault(user["external_id"], []).append(user)
        by_user = {s.body["user_id"]: s for s in sent}
        found = [
            Violation("effect_without_request", f"DMS user {external_id}")
            for external_id in users
            if external_id not in by_user or not (by_user[external_id].accepted or by_user[external_id].indeterminate)
        ]
        for s in sent:
            got = users.get(s.body["user_id"], [])
            if len(got) > 1:
                found.append(Violation("duplicate_effect", f"{len(got)} DMS users", s.request_id))
            want = 1 if s.accepted and s.expect == "completed" else 0
            if s.accepted and len(got) != want:
                found.append(
                    Violation("lost_effect" if want else "unexpected_effect", f"{len(got)} users", s.request_id)
                )
            if got and got[0]["name"] != s.body["name"]:
                found.append(Violation("wrong_effect", f"name {got[0]['name']!r}", s.request_id))
            final = finals.get(s.request_id)
            if s.accepted and want and final and final["status"] == "completed":
                response = final.get("response") or {}
                if got and response.get("dms_user_id") != got[0]["id"]:
                    found.append(Violation("wrong_answer", f"dms_user_id {response.get('dms_user_id')}", s.request_id))
        return found


class UpdateOrderStatus(Flow):
    """update_order_status (a third with a policy sub-request at the DMS): each order ends in the status sent last."""

    name = "update_order_status"
    weight = 3.0
    ORDERS = 12
    STATUSES = ("Confirmed", "In progress", "Shipped", "Delivered", "Completed", "Cancelled")

    def setup(self, ctx: Context) -> None:
        for i in range(self.ORDERS):
            number = f"CH-{ctx.tag}-ORD{i}"
            response = httpx.post(f"{ctx.fake_urls['crm']}/_fake/orders", json={"Number": number}, timeout=30)
            response.raise_for_status()
            ctx.orders.append(number)

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        body: dict[str, Any] = {
            "request_id": request_id,
            "order_id": rng.choice(ctx.orders),
            "status": rng.choice(self.STATUSES),
            "status_changed_at": ctx.status_time(),
        }
        if rng.random() < 0.33:
            body |= {"needs_policy_info": True, "policy_number": "POL-0001"}
        return Sent(request_id, self.name, "/send_to_crm", body, "")

    def changed(self, sent: Sent) -> dict[str, Any]:
        other = next(s for s in self.STATUSES if s != sent.body["status"])
        return {**sent.body, "status": other}

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        found: list[Violation] = []
        orders = {o["Number"]: o for o in ctx.fake_state("crm")["orders"]}
        for number in ctx.orders:
            mine = [s for s in sent if s.body["order_id"] == number and (s.accepted or s.indeterminate)]
            if not mine:
                continue
            last = max(mine, key=lambda s: s.body["status_changed_at"])
            have = orders[number]["StatusName"]
            if have != last.body["status"] and last.accepted:
                found.append(
                    Violation(
                        "wrong_last_status",
                        f"{number} is {have!r}, 1C sent {last.body['status']!r} last",
                        last.request_id,
                    )
                )
            elif have != last.body["status"]:  # the last one may never have arrived: any of the accepted is fine
                later = [s for s in mine if s.accepted]
                if later and have != max(later, key=lambda s: s.body["status_changed_at"]).body["status"]:
                    found.append(Violation("wrong_last_status", f"{number} is {have!r}"))
        for s in sent:
            final = finals.get(s.request_id)
            response = (final or {}).get("response") or {}
            # a superseded update (applied false: a newer status was there first) asks the DMS nothing
            if (
                s.accepted
                and final
                and final["status"] == "completed"
                and s.body.get("needs_policy_info")
                and (response.get("applied"))
            ):
                policy = response.get("policy_info") or {}
                if policy.get("policy_number") != "POL-0001":
                    found.append(Violation("wrong_answer", f"policy_info {policy}", s.request_id))
        return found


class GetPolicyInfo(Flow):
    """get_policy_info: a read, answered with the policy."""

    name = "get_policy_info"
    weight = 2.0

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        body = {"request_id": request_id, "policy_number": "POL-0001"}
        return Sent(request_id, self.name, "/requests/dms/get_policy_info", body, "")

    def changed(self, sent: Sent) -> dict[str, Any]:
        return {**sent.body, "policy_number": "POL-0002"}

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        found = []
        for s in sent:
            final = finals.get(s.request_id)
            answer = (final or {}).get("response") or {}
            if s.accepted and final and final["status"] == "completed" and answer.get("policy_number") != "POL-0001":
                found.append(Violation("wrong_answer", str(final.get("response"))[:200], s.request_id))
        return found


PDF = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 300 + b"%%EOF\n"


class SendPdfFile(Flow):
    """send_pdf_file: one complete file at Creatio per accepted request, of the size sent."""

    name = "send_pdf_file"
    weight = 1.0

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        body = {
            "request_id": request_id,
            "message_type": "send_pdf_file",
            "order_id": rng.choice(ctx.orders),
            "file_name": f"{request_id}.pdf",
            "file_content": base64.b64encode(PDF).decode(),
        }
        return Sent(request_id, self.name, "/send_to_crm", body, "")

    def changed(self, sent: Sent) -> dict[str, Any]:
        return {**sent.body, "file_content": base64.b64encode(PDF + b"\n").decode()}

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        files: dict[str, list[dict[str, Any]]] = {}
        for f in ctx.fake_state("crm")["files"]:
            if f["name"].startswith(f"CH-{ctx.tag}-"):
                files.setdefault(f["name"], []).append(f)
        names = {s.body["file_name"]: s for s in sent}
        found = [
            Violation("effect_without_request", f"file {name}")
            for name in files
            if name not in names or not (names[name].accepted or names[name].indeterminate)
        ]
        for s in sent:
            got = [f for f in files.get(s.body["file_name"], []) if f.get("complete")]
            if len(got) > 1:
                found.append(Violation("duplicate_effect", f"{len(got)} complete files", s.request_id))
            if s.accepted and not got:
                found.append(Violation("lost_effect", "no complete file", s.request_id))
            if got and got[0]["size"] != len(PDF):
                found.append(Violation("wrong_effect", f"size {got[0]['size']}", s.request_id))
        return found


class EventFlow(Flow):
    """Events a source posts to esi's webhook (`POST /events/<source>/<type>`), as the source posts them.

    A few records, each changed at increasing revisions; now and then a revision is held back and posted after the
    next one (as a source retrying a failed webhook call does), so that order per record is exercised: a stale
    revision must be dropped (superseded), never handed over after a newer one. esi keeps no request record of an
    event: the liveness check is the flow's own (`judge`). What every event flow checks: each accepted event in
    esi's event log; each subscriber given the highest revision accepted; 1C (pushed to its HTTP service: the fake
    1C) ending at it, each change under one message id; nothing at 1C that no post carried.
    """

    source: ClassVar[str]
    #: an event has no outcome to wait for or poll, and a changed body is another event (not a conflict)
    modes: ClassVar[dict[str, float] | None] = {"fire": 0.7, "repeat": 0.3}
    #: the systems subscribed to this flow's events (`System.subscribes`)
    subscribers: ClassVar[tuple[str, ...]] = ("1c",)
    RECORDS = 5
    #: the share of revisions held back and posted after the next one
    HOLD_BACK = 0.25

    def __init__(self) -> None:
        #: per record: the next revision to give, and the revisions held back (posted later, stale by then)
        self._next: dict[str, int] = {}
        self._held: dict[str, list[int]] = {}
        self._stats: dict[str, Any] = {}

    def records(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    def event(self, rng: random.Random, record: str, revision: int, request_id: str) -> tuple[str, dict[str, Any]]:
        """The event type and body of `record`'s change to `revision`."""
        raise NotImplementedError

    @staticmethod
    def revision_of(version: str) -> int:
        """A revision from a version as esi and 1C write it (the event's version field as text, or its sort key)."""
        return int(version)

    def make(self, ctx: Context, rng: random.Random, request_id: str) -> Sent:
        record = rng.choice(self.records(ctx))
        nxt, held = self._next.get(record, 1), self._held.setdefault(record, [])
        if held and rng.random() < 0.5:
            revision = held.pop(0)  # a newer one went first: this one is stale now
        elif rng.random() < self.HOLD_BACK:
            held.append(nxt)
            revision, self._next[record] = nxt + 1, nxt + 2
        else:
            revision, self._next[record] = nxt, nxt + 1
        event_type, body = self.event(rng, record, revision, request_id)
        sent = Sent(request_id, self.name, f"/events/{self.source}/{event_type}", body, "", record=False)
        sent.extra |= {"event_type": event_type, "record": record, "revision": revision}
        return sent

    def repeat_violation(self, sent: Sent, again: httpx.Response) -> str | None:
        # the same change again: taken before (200 duplicate), or 202 when the first answer was of a post that was
        # not stored after all; never 409, and the same event
        if again.status_code not in (200, 202):
            return f"a repeated event was answered {again.status_code}: {again.text[:200]}"
        first = (sent.extra.get("answer") or {}).get("event_id")
        if _json(again).get("event_id") != first:
            return f"a repeated event was answered as another event: {again.text[:200]} (first: {first})"
        return None

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        mine = set(self.records(ctx))
        onec = ctx.fake_state("1c")
        received = [m for m in onec["received"] if m.get("source") == self.source and m.get("key") in mine]
        self._stats = {
            "accepted": sum(1 for s in sent if s.accepted),
            "duplicates": sum(1 for s in sent if (s.extra.get("answer") or {}).get("status") == "duplicate"),
            "stale": self.stale(sent),
            "logged": sum(
                1 for s in sent if (s.extra.get("answer") or {}).get("event_id") in ctx.store_events.get("logged", ())
            ),
            "at_1c": len(received),
        }
        return self.judge(self.records(ctx), sent, received, ctx.store_events)

    def stats(self) -> dict[str, Any]:
        return self._stats

    @staticmethod
    def stale(sent: list[Sent]) -> int:
        """Accepted events older than one of their record accepted before them: order per record at work."""
        count, highest = 0, dict[str, int]()
        for s in sorted((s for s in sent if s.accepted_at is not None), key=lambda s: s.accepted_at or 0.0):
            record, revision = s.extra["record"], s.extra["revision"]
            if revision < highest.get(record, 0):
                count += 1
            highest[record] = max(revision, highest.get(record, 0))
        return count

    @staticmethod
    def outcome(sent: list[Sent], record: str) -> tuple[dict[int, Sent], int | None, set[int]]:
        """`record`'s posts that may have been taken (by revision), the highest accepted, and the revisions it may
        end at: the highest accepted, or a higher one whose post was never answered for sure."""
        posts = [s for s in sent if s.extra["record"] == record]
        maybe = {s.extra["revision"]: s for s in posts if s.accepted or s.indeterminate}
        top = max((s.extra["revision"] for s in posts if s.accepted), default=None)
        return maybe, top, {r for r in maybe if top is not None and r >= top}

    def judge(
        self, records: list[str], sent: list[Sent], received: list[dict[str, Any]], store: dict[str, Any]
    ) -> list[Violation]:
        """`received`: what the fake 1C recorded of this flow's records; `store`: `logged`, the event ids of esi's
        event log, and `given`, {(subscriber, record): version} as esi recorded each hand-over."""
        found: list[Violation] = []
        logged = set(store.get("logged", ()))
        given: dict[tuple[str, str], str] = store.get("given", {})
        for s in sent:
            event_id = (s.extra.get("answer") or {}).get("event_id")
            if s.accepted and event_id not in logged:
                found.append(Violation("lost_event", f"accepted as {event_id}, not in the event log", s.request_id))
        at_1c: dict[str, dict[int, set[str]]] = {}
        for m in received:
            at_1c.setdefault(m["key"], {}).setdefault(self.revision_of(m["version"]), set()).add(m["message_id"])
        for record in records:
            maybe, top, allowed = self.outcome(sent, record)
            versions = at_1c.get(record, {}) if "1c" in self.subscribers else {}
            for revision, ids in sorted(versions.items()):
                if revision not in maybe:
                    found.append(Violation("effect_without_request", f"1C got {record} revision {revision}"))
                    continue
                post = maybe[revision]
                if len(ids) > 1:
                    found.append(
                        Violation(
                            "duplicate_effect", f"1C got {record} r{revision} as {len(ids)} messages", post.request_id
                        )
                    )
                want = (post.extra.get("answer") or {}).get("message_id")
                if want is not None and want not in ids:
                    found.append(Violation("wrong_effect", f"1C got {record} r{revision} as {sorted(ids)}, not {want}"))
            last = max(versions, default=None)
            if "1c" in self.subscribers and top is not None and last not in allowed:
                found.append(
                    Violation(
                        "wrong_last_revision", f"1C's last revision of {record} is {last}, highest accepted {top}"
                    )
                )
            for subscriber in self.subscribers:
                was = given.get((subscriber, record))
                revision = None if was is None else self.revision_of(was)
                if top is not None and revision not in allowed:
                    found.append(
                        Violation(
                            "not_delivered",
                            f"esi gave {subscriber} revision {revision} of {record}, highest accepted {top}",
                        )
                    )
        return found


class PolicyEvents(EventFlow):
    """The DMS's policy events (`policy_issued` at revision 1, then `policy_changed`, a fifth `policy_cancelled`),
    posted to the DMS's signed webhook: every post — every retry too — signed anew (a fresh `X-Esi-Timestamp`).
    Subscribers: Creatio (one `UsrPolicy` row per policy, holding the highest revision with its fields) and 1C."""

    name = "policy_events"
    source = "dms"
    weight = 1.5
    subscribers = ("crm", "1c")

    def records(self, ctx: Context) -> list[str]:
        return self.policies(ctx)

    @staticmethod
    def policies(ctx: Context) -> list[str]:
        return [f"CH-{ctx.tag}-POL{i}" for i in range(EventFlow.RECORDS)]

    def event(self, rng: random.Random, record: str, revision: int, request_id: str) -> tuple[str, dict[str, Any]]:
        if revision == 1:
            event_type, status = "policy_issued", "active"
        elif rng.random() < 0.2:
            event_type, status = "policy_cancelled", "cancelled"
        else:
            event_type, status = "policy_changed", rng.choice(("active", "suspended"))
        body = {
            "policy_number": record,
            "revision": revision,
            "status": status,
            "holder_name": f"Хаос {request_id[-6:]} r{revision}",
            "start_date": "2026-01-01",
        }
        return event_type, body

    def headers(self, ctx: Context, sent: Sent, content: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        mac = hmac.new(ctx.dms_webhook_secret.encode(), f"{timestamp}.".encode() + content, hashlib.sha256)
        return {"X-Esi-Timestamp": timestamp, "X-Esi-Signature": f"sha256={mac.hexdigest()}"}

    def check(self, ctx: Context, sent: list[Sent], finals: dict[str, dict[str, Any]]) -> list[Violation]:
        found = super().check(ctx, sent, finals)
        mine = set(self.policies(ctx))
        rows = [row for row in ctx.fake_state("crm").get("policies", []) if row.get("UsrNumber") in mine]
        self._stats["creatio_rows"] = len(rows)
        return found + self.at_creatio(self.policies(ctx), sent, rows)

    @classmethod
    def at_creatio(cls, policies: list[str], sent: list[Sent], rows: list[dict[str, Any]]) -> list[Violation]:
        """Creatio's `UsrPolicy` row of each policy holds the highest revision accepted (or a higher one whose post
        was never answered for sure), with that revision's fields; no row that no post carried."""
        found: list[Violation] = []
        row_of = {row["UsrNumber"]: row for row in rows}
        for number in policies:
            maybe, top, allowed = cls.outcome(sent, number)
            row = row_of.get(number)
            if row is None:
                if top is not None:
                    found.append(
                        Violation("lost_effect", f"no UsrPolicy {number} at Creatio (revision {top} accepted)")
                    )
                continue
            have = int(row.get("UsrRevision") or 0)
            if have not in maybe:
                found.append(Violation("effect_without_request", f"Creatio's {number} at revision {have}"))
            elif top is not None and have not in allowed:
                found.append(
                    Violation("wrong_last_revision", f"Creatio's {number} at revision {have}, highest accepted {top}")
                )
            else:
                body = maybe[have].body
                if (row.get("UsrStatus"), row.get("UsrHolder")) != (body["status"], body["holder_name"]):
                    found.append(
                        Violation(
                            "wrong_effect",
                            f"Creatio's {number} r{have}: {row.get('UsrStatus')!r} {row.get('UsrHolder')!r}",
                            maybe[have].request_id,
                        )
                    )
        return found


#: the time Creatio's ModifiedOn of an order-changed event counts from (revision r: r seconds later)
_MODIFIED_BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class OrderEvents(EventFlow):
    """Creatio's `order_changed` events, posted to its webhook (`POST /events/crm/order_changed`) as its business
    process does (HTTP Basic of a client with the scope `events:crm`; the run's esi has authentication off), with
    `ModifiedOn` as the version. Subscriber: 1C."""

    name = "order_events"
    source = "crm"
    weight = 1.0
    subscribers = ("1c",)

    def records(self, ctx: Context) -> list[str]:
        return [f"CH-{ctx.tag}-OC{i}" for i in range(self.RECORDS)]

    def event(self, rng: random.Random, record: str, revision: int, request_id: str) -> tuple[str, dict[str, Any]]:
        modified = _MODIFIED_BASE + dt.timedelta(seconds=revision)
        body = {
            "Id": record,
            "Number": f"{record}-N",
            "Status": rng.choice(UpdateOrderStatus.STATUSES),
            "ModifiedOn": modified.isoformat().replace("+00:00", "Z"),
        }
        return "order_changed", body

    @staticmethod
    def revision_of(version: str) -> int:
        moment = dt.datetime.fromisoformat(version.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return round((moment - _MODIFIED_BASE).total_seconds())


FLOWS: tuple[type[Flow], ...] = (
    CreateUser,
    UpdateOrderStatus,
    GetPolicyInfo,
    SendPdfFile,
    PolicyEvents,
    OrderEvents,
)


class Workload:
    """Sends `rate` requests a second, drawn over `flows` by weight and over `MODES`, to the API processes in turn."""

    def __init__(
        self, ctx: Context, apis: list[str], *, rate: float, seed: int, flows: list[Flow] | None = None
    ) -> None:
        self.ctx = ctx
        self.apis = apis
        self.rate = rate
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
        self.flows = flows if flows is not None else [f() for f in FLOWS]
        self.sent: list[Sent] = []
        self._next_api = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def setup(self) -> None:
        for flow in self.flows:
            flow.setup(self.ctx)

    def in_flight(self, at: float, finals: dict[str, dict[str, Any]]) -> int:
        """Requests sent and not yet settled at `at` (epoch seconds)."""
        count = 0
        for s in self.sent:
            if s.sent_at > at:
                continue
            final = finals.get(s.request_id)
            end = final["settled_at"] if final and final.get("settled_at") else s.done_at
            if end >= at:
                count += 1
        return count

    async def run(self, duration: float) -> None:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            due = start + n / self.rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            n += 1
            flow = self.rng.choices(self.flows, weights=[f.weight for f in self.flows])[0]
            sent = flow.make(self.ctx, self.rng, f"CH-{self.ctx.tag}-{n:06d}")
            modes = flow.modes or MODES
            sent.mode = self.rng.choices(list(modes), weights=list(modes.values()))[0]
            sent.extra["delay"] = self.rng.uniform(0.2, 3.0)
            self.sent.append(sent)
            task = asyncio.create_task(self._one(flow, sent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _api(self) -> str:
        self._next_api = (self._next_api + 1) % len(self.apis)
        return self.apis[self._next_api]

    async def _post(
        self, client: httpx.AsyncClient, flow: Flow, sent: Sent, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response | None:
        """Post until a definite answer: 2xx or 4xx other than 429. None: given up."""
        deadline = time.monotonic() + POST_GIVE_UP_S
        content = json.dumps(body, ensure_ascii=False).encode()
        while time.monotonic() < deadline:
            each = {"Content-Type": "application/json", **headers, **flow.headers(self.ctx, sent, content)}
            try:
                response = await client.post(f"{self._api()}{sent.path}", content=content, headers=each)
            except httpx.HTTPError as exc:
                sent.answers.append(f"err:{type(exc).__name__}")
                await asyncio.sleep(1.0)
                continue
            sent.answers.append(str(response.status_code))
            if response.status_code < 300 or (400 <= response.status_code < 500 and response.status_code != 429):
                return response
            await asyncio.sleep(1.0)
        return None

    async def _one(self, flow: Flow, sent: Sent) -> None:
        # a client (a connection pool) per request, as 1C's exchange opens its own connections: a shared pool whose
        # connections were cut mid-request by the faults ran out of slots for good (httpcore), and the workload, not
        # esi, stopped sending
        async with httpx.AsyncClient(timeout=httpx.Timeout(40, connect=5)) as client:
            await self._one_with(client, flow, sent)

    async def _one_with(self, client: httpx.AsyncClient, flow: Flow, sent: Sent) -> None:
        sent.sent_at = time.time()
        headers = {"Prefer": "wait=15"} if sent.mode == "wait" else {}
        try:
            response = await self._post(client, flow, sent, sent.body, headers)
            if response is None:
                return
            if response.status_code >= 300:
                sent.client_violation = f"first post answered {response.status_code}: {response.text[:200]}"
                return
            sent.accepted_at = time.time()
            record = _json(response)
            sent.extra["answer"] = record
            if record.get("status") in FINAL:
                sent.seen_final = record
            if sent.mode == "poll":
                sent.seen_final = await self._poll(client, sent)
            elif sent.mode in ("repeat", "conflict"):
                await asyncio.sleep(sent.extra["delay"])
                body = sent.body if sent.mode == "repeat" else flow.changed(sent)
                again = await self._post(client, flow, sent, body, {})
                if again is None:
                    return
                if sent.mode == "conflict":
                    if again.status_code != 409:
                        sent.client_violation = f"a changed body was answered {again.status_code}, not 409"
                else:
                    sent.client_violation = flow.repeat_violation(sent, again)
        finally:
            sent.done_at = time.time()

    async def _poll(self, client: httpx.AsyncClient, sent: Sent) -> dict[str, Any] | None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                response = await client.get(f"{self._api()}/requests/{sent.request_id}", params={"wait": 5})
            except httpx.HTTPError:
                await asyncio.sleep(1.0)
                continue
            if response.status_code == 200 and _json(response).get("status") in FINAL:
                return _json(response)
            if response.status_code == 404:
                sent.client_violation = "an accepted request was unknown to a GET"
                return None
            if response.status_code != 200:
                await asyncio.sleep(1.0)
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
