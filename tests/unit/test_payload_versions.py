"""Payload versions: the current one is read, the previous one upcast, a newer or older one refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from esi.errors import InvalidMessage, PermanentError
from esi.messages import Catalog, Envelope, Kind, MessageSpec
from esi.messages.envelope import decode_envelope
from esi.messages.payload import Payload


class ShipV3(Payload):
    VERSION = 3
    model_config = ConfigDict(extra="forbid")

    parcels: list[str]

    @classmethod
    def upcast(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {"parcels": [data.pop("parcel")]}


class Plain(BaseModel):
    name: str


CATALOG = Catalog(
    [
        MessageSpec("ship", Kind.REQUEST, ShipV3, handled_by="depot"),
        MessageSpec("plain", Kind.REQUEST, Plain, handled_by="depot"),
    ]
)


def _envelope(message_type: str, version: int, payload: dict[str, Any]) -> Envelope:
    return Envelope(
        request_id="R1",
        source_system="1c",
        target_system="depot",
        message_type=message_type,
        schema_version=version,
        payload=payload,
    )


def test_the_current_version_is_read_as_it_is_and_the_previous_one_upcast() -> None:
    assert CATALOG.get("ship").version == 3
    assert CATALOG.get("plain").version == 1
    assert CATALOG.validate_payload(_envelope("ship", 3, {"parcels": ["P1"]})) == ShipV3(parcels=["P1"])
    assert CATALOG.validate_payload(_envelope("ship", 2, {"parcel": "P1"})) == ShipV3(parcels=["P1"])


@pytest.mark.parametrize(
    ("message_type", "version", "says"),
    [
        ("ship", 4, "ship version 4 is newer than this consumer's 3"),
        ("ship", 1, "ship version 1 is too old: this consumer reads 2 and 3"),
        ("plain", 2, "plain version 2 is newer than this consumer's 1"),
    ],
)
def test_other_versions_are_refused_for_good_with_the_reason(message_type: str, version: int, says: str) -> None:
    with pytest.raises(InvalidMessage, match=says) as caught:
        CATALOG.validate_payload(_envelope(message_type, version, {"parcels": [], "name": "x"}))
    assert caught.value.code == "unsupported_version"
    assert isinstance(caught.value, PermanentError)


def test_an_upcast_that_cannot_read_the_old_payload_is_a_named_permanent_error() -> None:
    with pytest.raises(InvalidMessage, match="could not be upcast"):
        CATALOG.validate_payload(_envelope("ship", 2, {"nothing": 1}))


def test_outgoing_messages_are_stamped_with_their_current_version() -> None:
    stamped, key = CATALOG.outgoing(_envelope("ship", 1, {"parcels": []}))
    assert stamped.schema_version == 3
    assert key == "1c.request.depot.ship"


def test_the_originals_envelope_without_message_id_gets_the_same_id_each_time() -> None:
    body = (
        b'\xef\xbb\xbf{"source_system": "1C", "target_system": "DMS", "message_type": "create_user", '
        b'"request_id": "USER_REQ_001", "payload": {"request_id": "USER_REQ_001"}}'
    )
    first, again = decode_envelope(body), decode_envelope(body)
    assert first.message_id == again.message_id
    assert first.source_system == "1c"
    assert first.schema_version == 1
    other = decode_envelope(body.replace(b"USER_REQ_001", b"USER_REQ_002"))
    assert other.message_id != first.message_id
