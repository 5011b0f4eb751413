"""One change of a record has one event id, whichever way it reached esi (the webhook or the poller)."""

from __future__ import annotations

from esi.events.identity import event_id, record_key, version_key

GUID = "3b9f1667-165a-4dbf-b422-4d490c214605"


def test_a_guid_is_one_record_whatever_its_case_and_anything_else_stays_as_it_is() -> None:
    assert record_key(GUID.upper()) == record_key(f" {GUID} ") == GUID
    assert record_key("ORD9876") == "ORD9876"


def test_the_webhook_and_the_poller_give_one_change_one_event_id() -> None:
    # a business process maps ModifiedOn as it likes (Z, an offset, milliseconds) and Id in upper case; the OData
    # reader gives Creatio's own form: one change, one id
    from_webhook = event_id("crm", "order_changed", record_key(GUID.upper()), version_key("2026-12-07T10:00:00.120Z"))
    from_poller = event_id("crm", "order_changed", record_key(GUID), version_key("2026-12-07T10:00:00.12+00:00"))
    assert from_webhook == from_poller
    later = event_id("crm", "order_changed", record_key(GUID), version_key("2026-12-07T10:00:00.121+00:00"))
    assert later != from_poller
