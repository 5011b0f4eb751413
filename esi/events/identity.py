"""What identifies an event: its source, type, record id and version; and versions made comparable as text.

The same change of a record reaching esi twice (the webhook called again, the poller finding what the webhook
already brought) has one event id and one message id, so it is taken once and, if published twice, handled once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

_EVENT_NS = uuid.UUID("6c3f1b8e-0a57-4f2e-9b1d-2e7d4c5a9f10")
#: the width integers are padded to, so that revision 10 sorts after revision 9
_INT_WIDTH = 20


def version_key(value: object) -> str:
    """A version as text that sorts like the versions do: integers (a revision) padded, times (Creatio's
    `ModifiedOn`) as UTC ISO 8601 with microseconds; anything else as it is. ValueError for an empty one."""
    if isinstance(value, bool) or value is None or value == "":
        raise ValueError(f"a version must be a revision number or a time, not {value!r}")
    if isinstance(value, int | Decimal) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        if number < 0:
            raise ValueError(f"a revision must not be negative: {value!r}")
        return f"{number:0{_INT_WIDTH}d}"
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text[:64]
    if moment.tzinfo is None:  # Creatio's OData gives UTC without an offset
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def record_key(value: object) -> str:
    """A record id as one text for one record: a GUID in its canonical lower-case form (a Creatio business process
    may hand `Id` in upper case, its OData gives lower case), anything else as it is."""
    text = str(value).strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


def event_id(source: str, event_type: str, record_id: str, version: str) -> str:
    """The event's id (its timeline's key, the `request_id` of its envelope): the same for the same change."""
    digest = uuid.uuid5(_EVENT_NS, f"{source}|{event_type}|{record_id}|{version}").hex
    return f"evt-{source}-{digest}"


def message_id(event: str) -> str:
    """The id of the event's message (its `X-Esi-Message-Id` for 1C): the same on every repeat."""
    return uuid.uuid5(_EVENT_NS, event).hex
