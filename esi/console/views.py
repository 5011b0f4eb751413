"""What the console's pages draw, computed here and rendered by the templates (which escape every value).

- `minute_chart`: requests per minute by outcome over the last hour, as the bars of an inline SVG;
- `sequence`: a request's timeline as a sequence diagram across 1C, esi's services and the external systems;
- `group_dead_letters`: dead letters grouped by queue and error code, with counts and first / last seen.

The texts on the drawings are `esi.console.i18n.Text`: English as strings, translated by the page that draws them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from esi.bus import headers as h
from esi.bus.dead_letters import DeadLetter
from esi.console.i18n import N_, label
from esi.systems.registry import Registry

__all__ = [
    "OUTCOMES",
    "Chart",
    "DeadLetterGroup",
    "SequenceDiagram",
    "group_code",
    "group_dead_letters",
    "minute_chart",
    "sequence",
]

#: the outcomes charted, bottom to top
OUTCOMES = ("completed", "failed", "dead_lettered", "in_progress", "accepted")


# --- requests per minute ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    outcome: str
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    peak: int
    totals: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.totals.values())


def minute_chart(
    counts: Iterable[tuple[str, str, int]], *, now: datetime, minutes: int = 60, bar: int = 5, height: int = 48
) -> Chart:
    """Stacked bars, one per minute of the last `minutes` (the oldest on the left), from `(minute, outcome, count)`
    where a minute is `YYYY-MM-DDTHH:MM` (UTC)."""
    start = now.astimezone(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    labels = [(start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M") for i in range(minutes)]
    index = {label: i for i, label in enumerate(labels)}
    per_minute: list[dict[str, int]] = [{} for _ in labels]
    totals = {outcome: 0 for outcome in OUTCOMES}
    for minute, outcome, count in counts:
        i = index.get(minute)
        if i is None:
            continue
        per_minute[i][outcome] = per_minute[i].get(outcome, 0) + count
        totals[outcome] = totals.get(outcome, 0) + count
    peak = max((sum(m.values()) for m in per_minute), default=0)
    scale = height / peak if peak else 0.0
    bars: list[Bar] = []
    for i, minute_counts in enumerate(per_minute):
        y = float(height)
        for outcome in (*OUTCOMES, *sorted(set(minute_counts) - set(OUTCOMES))):
            count = minute_counts.get(outcome, 0)
            if not count:
                continue
            size = max(count * scale, 1.0)
            y -= size
            bars.append(
                Bar(
                    x=i * bar,
                    y=round(y, 2),
                    width=bar - 1,
                    height=round(size, 2),
                    outcome=outcome,
                    title=N_(
                        "%(minute)s UTC: %(count)s %(outcome)s",
                        minute=labels[i][11:],
                        count=count,
                        outcome=label(outcome),
                    ),
                )
            )
    return Chart(width=minutes * bar, height=height, bars=tuple(bars), peak=peak, totals=totals)


# --- a request's timeline as a sequence ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    key: str
    label: str
    #: `external` (1C, Creatio, the DMS) or `esi` (one of esi's services)
    kind: str
    x: float = 0.0


@dataclass(frozen=True)
class Step:
    """One hop: an arrow between two lanes, or a note on one (`source == target`)."""

    at: str
    offset_ms: float
    event: str
    service: str
    source: str
    target: str
    label: str
    #: `ok`, `warn` or `error`: how the step is coloured
    tone: str = "ok"
    #: the answer read by 1C, drawn dashed
    dashed: bool = False
    x1: float = 0.0
    x2: float = 0.0
    y: float = 0.0

    @property
    def is_note(self) -> bool:
        return self.source == self.target

    @property
    def short_label(self) -> str:
        """The label as an arrow has room for it (the table under the diagram has it whole)."""
        return self.label if len(self.label) <= 48 else f"{self.label[:47]}…"

    @property
    def note_label(self) -> str:
        """The label as a note on one lane has room for it."""
        return self.label if len(self.label) <= 26 else f"{self.label[:25]}…"


@dataclass
class SequenceDiagram:
    lanes: list[Lane]
    steps: list[Step]
    width: int = 0
    height: int = 0
    lane_width: int = 150
    top: int = 44
    row: int = 34
    left: int = 96
    events: list[dict[str, Any]] = field(default_factory=list)


def _lanes(registry: Registry) -> list[Lane]:
    origin = registry.origin
    lanes = [
        Lane(f"ext:{origin.code}", origin.title, "external"),
        Lane(f"esi:{origin.code}", f"esi {origin.service}", "esi"),
    ]
    for system in registry.systems:
        if system.origin:
            continue
        lanes += [
            Lane(f"esi:{system.code}", f"esi {system.service}", "esi"),
            Lane(f"ext:{system.code}", system.title, "external"),
        ]
    return lanes


def _service_lane(registry: Registry, service: str) -> str:
    if service in ("api", "relay"):
        return f"esi:{registry.origin.code}"
    try:
        return f"esi:{registry.by_service(service).code}"
    except KeyError:
        return f"esi:{service}"


def _routing_target(routing_key: str | None) -> str | None:
    parts = (routing_key or "").split(".")
    return parts[2].lower() if len(parts) >= 4 else None


def _millis(start: datetime | None, at: str) -> float:
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return 0.0
    return round((moment - start).total_seconds() * 1000, 1) if start else 0.0


def _step(registry: Registry, event: dict[str, Any], start: datetime | None) -> Step:
    detail: dict[str, Any] = event.get("detail") or {}
    name, service = str(event.get("event")), str(event.get("service"))
    lane = _service_lane(registry, service)
    origin = f"ext:{registry.origin.code}"
    message_type = event.get("message_type") or ""
    at = str(event.get("at"))
    base = functools.partial(Step, at, _millis(start, at), name, service)
    if name == "accepted":
        text = N_("request %(type)s", type=message_type) if message_type else N_("request")
        return base(source=origin, target=lane, label=text)
    if name == "published":
        target = _routing_target(detail.get("routing_key"))
        kind = (detail.get("routing_key") or "").split(".")[3:4]
        what = message_type or (kind[0] if kind else "")
        text = N_("publish %(type)s", type=what) if what else N_("publish")
        if detail.get("error"):
            return base(
                source=lane,
                target=f"esi:{target}" if target else lane,
                label=N_("%(step)s: %(error)s", step=text, error=str(detail["error"])),
                tone="warn",
            )
        return base(source=lane, target=f"esi:{target}" if target else lane, label=text)
    if name == "external_call":
        system = str(detail.get("system") or service)
        outcome = str(detail.get("outcome") or "")
        text = N_(
            "%(operation)s · %(duration)s ms · %(outcome)s",
            operation=str(detail.get("operation", "call")),
            duration=detail.get("duration_ms"),
            outcome=label(outcome) if outcome else "",
        )
        return base(
            source=f"esi:{system}", target=f"ext:{system}", label=text, tone="ok" if outcome == "ok" else "error"
        )
    if name in ("completed", "failed"):
        return base(
            source=lane,
            target=origin,
            label=N_("%(outcome)s: 1C reads the answer", outcome=label(name)),
            tone="ok" if name == "completed" else "warn",
            dashed=True,
        )
    if name == "consumed":
        return base(source=lane, target=lane, label=N_("consumed · try %(attempt)s", attempt=detail.get("attempt", 1)))
    if name == "retry_scheduled":
        return base(
            source=lane,
            target=lane,
            tone="warn",
            label=N_(
                "retry in %(delay)s s (after try %(attempt)s)",
                delay=detail.get("delay_s"),
                attempt=detail.get("attempt"),
            ),
        )
    if name == "waiting":
        return base(
            source=lane, target=lane, tone="warn", label=N_("waiting: %(error)s", error=detail.get("error", ""))
        )
    if name == "dead_lettered":
        queue = detail.get("queue")
        text = N_("dead-lettered to %(queue)s", queue=queue) if queue else N_("dead-lettered to its DLQ")
        return base(source=lane, target=lane, tone="error", label=text)
    return base(source=lane, target=lane, label=label(name))


def sequence(registry: Registry, events: Sequence[dict[str, Any]]) -> SequenceDiagram:
    """The timeline `events` (oldest first, as the store gives them) laid out across the lanes they touch."""
    try:
        start = datetime.fromisoformat(str(events[0]["at"])) if events else None
    except ValueError:
        start = None
    steps = [_step(registry, event, start) for event in events]
    known = _lanes(registry)
    used = {s.source for s in steps} | {s.target for s in steps} | {known[0].key, known[1].key}
    # the origin's two lanes first, then each system's pair in the order the request reached it: left to right
    first_seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        for key in (step.source, step.target):
            first_seen.setdefault(key.partition(":")[2], i)
    lanes = [lane for lane in known[:2] if lane.key in used] + sorted(
        (lane for lane in known[2:] if lane.key in used),
        key=lambda lane: (first_seen.get(lane.key.partition(":")[2], len(steps)), lane.kind != "esi"),
    )
    lanes += [Lane(key, key.partition(":")[2], "esi") for key in sorted(used - {lane.key for lane in known})]
    diagram = SequenceDiagram(lanes=[], steps=[], events=list(events))
    x_of: dict[str, float] = {}
    for i, lane in enumerate(lanes):
        x_of[lane.key] = diagram.left + i * diagram.lane_width + diagram.lane_width / 2
        diagram.lanes.append(Lane(lane.key, lane.label, lane.kind, x_of[lane.key]))
    for i, step in enumerate(steps):
        y = diagram.top + (i + 1) * diagram.row
        diagram.steps.append(replace(step, x1=x_of[step.source], x2=x_of[step.target], y=y))
    diagram.width = diagram.left + len(lanes) * diagram.lane_width + 8
    diagram.height = diagram.top + (len(steps) + 1) * diagram.row
    return diagram


# --- dead letters ----------------------------------------------------------------------------------------------------


def group_code(letter: DeadLetter) -> str:
    """The error code a dead letter is grouped by: esi's own, else its error class, else the broker's reason."""
    code = letter.headers.get(h.H_ERROR_CODE)
    if isinstance(code, bytes):
        code = code.decode("utf-8", "replace")
    if code:
        return str(code)
    if letter.error_class:
        return letter.error_class
    return "broker"


@dataclass
class DeadLetterGroup:
    queue: str
    code: str
    letters: list[DeadLetter] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.letters)

    @property
    def first_seen(self) -> datetime | None:
        times = [d.dead_lettered_at for d in self.letters if d.dead_lettered_at]
        return min(times) if times else None

    @property
    def last_seen(self) -> datetime | None:
        times = [d.dead_lettered_at for d in self.letters if d.dead_lettered_at]
        return max(times) if times else None

    @property
    def reason(self) -> str:
        """The latest reason of the group (one code may carry several texts)."""
        return self.letters[-1].reason if self.letters else ""


def group_dead_letters(letters: Iterable[DeadLetter]) -> list[DeadLetterGroup]:
    """By queue and code; the largest group first."""
    groups: dict[tuple[str, str], DeadLetterGroup] = {}
    for letter in letters:
        key = (letter.queue, group_code(letter))
        groups.setdefault(key, DeadLetterGroup(*key)).letters.append(letter)
    return sorted(groups.values(), key=lambda g: (-g.count, g.queue, g.code))
