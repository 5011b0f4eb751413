"""Properties of the routing-key grammar, the envelope codec and the API's request builder (hypothesis).

Two regressions are pinned at the end: Python's `$` also matches before a trailing newline, so a check written with
`re.match(...$)` once let "create_user\n" and a request_id ending in "\n" through (the latter as a 500).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esi.api.errors import ApiError
from esi.api.ingress import Accepted, build_request, prefer_wait
from esi.errors import InvalidMessage
from esi.messages import Envelope, ErrorInfo, Kind, RoutingKey, decode_envelope
from esi.messages.envelope import ID_PATTERN
from esi.systems.registry import load_registry

CATALOG = load_registry().catalog
SYSTEMS = load_registry().codes
#: the grammar of a system code: which systems exist is the registry's business, not the routing key's
SYSTEM_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
TARGETS = CATALOG.targets()
REQUEST_KEYS = {f"1c.request.{t}.{m}" for t in TARGETS for m in CATALOG.requests_for(t)}
ALL_TYPES = sorted(
    {m for t in TARGETS for m in CATALOG.requests_for(t)}
    | {"user_created", "policy_info_response", "order_status_updated", "pdf_received"}
)
NASTY = ["*", "#", ".", " ", "\n", "\t", "\r", "\x00", "K", "İ", "ß", "Д", "_", "-", "..", "\u00a0", "\u2028"]
#: around a valid string: where `re.match(...$)`, `str.strip()` and pydantic's patterns disagree
WHITESPACE = st.sampled_from(["\n", " ", "\t", "\r\n", "\n\n", "\u2028", "\x0b", "\u00a0"])
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"


# --- strategies -----------------------------------------------------------------------------------------------------

systems = st.sampled_from(SYSTEMS)
#: the four-part keys of requests and responses (an event's key, `<source>.event.<type>`, has no target)
kinds = st.sampled_from([Kind.REQUEST, Kind.RESPONSE])
message_types = st.from_regex(TYPE_RE, fullmatch=True)


@st.composite
def mixed_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips))


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters inserted, replaced or deleted, favouring the ones a grammar trips on."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 3))):
        piece = draw(st.sampled_from(NASTY) | st.characters(codec="utf-8"))
        position = draw(st.integers(0, len(chars)))
        action = draw(st.sampled_from(["insert", "replace", "delete", "append"]))
        if action == "insert":
            chars.insert(position, piece)
        elif action == "append":
            chars.append(piece)
        elif chars and position < len(chars):
            if action == "replace":
                chars[position] = piece
            else:
                del chars[position]
    return "".join(chars)


@st.composite
def valid_keys(draw: st.DrawFn) -> str:
    return f"{draw(systems)}.{draw(kinds).value}.{draw(systems)}.{draw(message_types)}"


routing_key_candidates = st.one_of(
    st.text(max_size=40),
    valid_keys(),
    valid_keys().flatmap(mutated),
    valid_keys().flatmap(mixed_case),
    st.tuples(WHITESPACE, valid_keys(), WHITESPACE, st.booleans()).map(lambda t: t[0] * t[3] + t[1] + t[2]),
    st.lists(
        st.sampled_from([*SYSTEMS, "request", "response", "create_user", "*", "#", "", "1C", "Dms"]),
        min_size=1,
        max_size=6,
    ).map(".".join),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
texts_with_cyrillic = st.text(alphabet=st.sampled_from(CYRILLIC) | st.characters(codec="utf-8"), max_size=30)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    payload = draw(st.dictionaries(texts_with_cyrillic, json_values | texts_with_cyrillic, max_size=5))
    error = draw(
        st.none()
        | st.builds(
            ErrorInfo,
            code=st.text(max_size=10),
            message=texts_with_cyrillic,
            error_class=st.none() | st.text(max_size=10),
            system=st.none() | systems,
        )
    )
    return Envelope(
        request_id=draw(st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda s: not s.endswith("\n"))),
        causation_id=draw(st.none() | st.text(max_size=40)),
        source_system=draw(systems),
        target_system=draw(systems),
        message_type=draw(message_types),
        timestamp=draw(st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(UTC))),
        payload=payload,
        error=error,
        context=draw(st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
    )


# --- routing keys ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(source=systems, kind=kinds, target=systems, message_type=message_types)
def test_routing_key_str_and_parse_round_trip(source: str, kind: Kind, target: str, message_type: str) -> None:
    key = RoutingKey(source, kind, target, message_type)
    assert str(key) == f"{source}.{kind.value}.{target}.{message_type}"
    assert RoutingKey.parse(str(key)) == key


@SETTINGS
@given(data=st.data(), key=valid_keys())
def test_routing_keys_are_case_insensitive_and_normalised_to_lower_case(data: st.DataObject, key: str) -> None:
    shouted = data.draw(mixed_case(key))
    parsed = RoutingKey.parse(shouted)
    assert str(parsed) == key.lower() == key
    assert parsed == RoutingKey.parse(key)


@SETTINGS
@given(key=routing_key_candidates)
@example("1c.request.dms.create_*")
@example("1c.request.dms.#")
@example("1c.request.dms.create.user")
@example("erp.request.dms.create_user")
@example("1c.request.dms.create_user ")
@example(" 1C.REQUEST.DMS.CREATE_USER")
@example("1c.request.dms.\u212aelvin")  # KELVIN SIGN lower-cases to an ASCII k
def test_arbitrary_text_never_parses_outside_the_grammar(key: str) -> None:
    try:
        parsed = RoutingKey.parse(key)
    except ValueError:
        return
    assert SYSTEM_RE.fullmatch(parsed.source), parsed
    assert SYSTEM_RE.fullmatch(parsed.target), parsed
    assert isinstance(parsed.kind, Kind)
    assert TYPE_RE.fullmatch(parsed.message_type), parsed
    assert not set("*#. \t\r\n") & set(parsed.message_type)
    assert RoutingKey.parse(str(parsed)) == parsed
    assert str(parsed) == str(parsed).lower()
    assert str(parsed).count(".") == 3


# --- the envelope codec ---------------------------------------------------------------------------------------------


def _envelope_like(data: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.just(json.dumps(data, ensure_ascii=False).encode("utf-8"))


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    base = json.loads(draw(envelopes()).encode())
    field = draw(st.sampled_from(sorted(base) + ["extra"]))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        base.pop(field, None)
    else:
        base[field] = draw(json_values)
    body = json.dumps(base, ensure_ascii=False).encode("utf-8")
    if choice == 2:
        body = draw(st.sampled_from([body[:-1], body + b"x", b"\xff" + body, body.replace(b'"', b"'", 1)]))
    return body


@SETTINGS
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated_envelopes(),
    )
)
@example(b"")
@example(b"\xff\xfe")
@example(b"[]")
@example(b"null")
@example(
    b'{"request_id": "r", "source_system": "1c", "target_system": "dms", "message_type": "x", "schema_version": 2}'
)
@example(b"[" * 2000 + b"]" * 2000)
@example(b'{"a": "\\ud800"}')
@example(b'{"request_id": "r", "source_system": 1, "target_system": "dms", "message_type": "x"}')
def test_decode_envelope_returns_an_envelope_or_raises_invalid_message(body: bytes) -> None:
    try:
        envelope = decode_envelope(body)
    except InvalidMessage as exc:
        assert exc.code in {"not_utf8", "invalid_json", "invalid_envelope"}  # noqa: PT017 - either outcome is valid: pytest.raises cannot say so
        return
    assert isinstance(envelope, Envelope)
    assert SYSTEM_RE.fullmatch(envelope.source_system)
    assert SYSTEM_RE.fullmatch(envelope.target_system)
    assert TYPE_RE.fullmatch(envelope.message_type)


@SETTINGS
@given(envelope=envelopes())
def test_envelope_encode_decode_round_trip(envelope: Envelope) -> None:
    encoded = envelope.encode()
    assert decode_envelope(encoded) == envelope
    assert decode_envelope(decode_envelope(encoded).encode()) == envelope


def test_cyrillic_travels_as_utf8_not_escaped() -> None:
    envelope = Envelope(
        request_id="R-1",
        source_system="1C",
        target_system="dms",
        message_type="Create_User",
        payload={"name": "Иван Петрович Сидоров", "адрес": "Москва, ул. Ленина, д. 1"},
    )
    encoded = envelope.encode()
    assert "Иван Петрович Сидоров".encode() in encoded
    assert b"\\u04" not in encoded
    decoded = decode_envelope(encoded)
    assert decoded == envelope
    assert decoded.payload["адрес"] == "Москва, ул. Ленина, д. 1"
    assert decoded.source_system == "1c"
    assert decoded.message_type == "create_user"


# --- the API's request builder --------------------------------------------------------------------------------------

PDF = base64.b64encode(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n").decode()
VALID_BODIES: dict[str, dict[str, Any]] = {
    "create_user": {"user_id": "U1", "name": "Иван", "email": "ivan@example.com", "phone": "+7 900"},
    "get_policy_info": {"policy_number": "POL-1"},
    "update_order_status": {
        "order_id": "ORD9876",
        "status": "Shipped",
        "needs_policy_info": True,
        "policy_number": "POL-1",
    },
    "send_pdf_file": {"order_id": "ORD9876", "file_name": "счёт.pdf", "file_content": PDF},
}
valid_ids = st.from_regex(ID_PATTERN, fullmatch=True)
request_ids = st.one_of(
    st.none(),
    st.just(""),
    valid_ids,
    st.tuples(valid_ids, WHITESPACE).map("".join),
    st.tuples(WHITESPACE, valid_ids).map("".join),
    st.text(max_size=20),
    json_scalars,
    valid_ids.flatmap(mutated),
)


@st.composite
def near_valid_bodies(draw: st.DrawFn, message_type: str | None = None) -> dict[str, Any]:
    if message_type is None:
        message_type = draw(st.sampled_from(sorted(VALID_BODIES)))
    body = dict(VALID_BODIES[message_type])
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(body) + ["request_id", "message_type", "extra", "file_content"]))
        if draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = draw(
                st.one_of(
                    json_values,
                    texts_with_cyrillic,
                    st.sampled_from([PDF, PDF[:-2], "JVBERi0=", "%PDF-", "", " ", "a" * 2000]),
                )
            )
    if draw(st.booleans()):
        body["request_id"] = draw(request_ids)
    return body


TARGET_OF = {m: t for t in TARGETS for m in CATALOG.requests_for(t)}
targets = st.one_of(
    st.sampled_from([*TARGETS, "1c", "DMS", " crm ", "Crm", "hr", "", "*", "dms.x"]), st.text(max_size=8)
)
types = st.one_of(
    st.sampled_from([*ALL_TYPES, "CREATE_USER", " create_user ", "create_user\n", "", "*", "#", "dms.create_user"]),
    st.text(max_size=12),
)
bodies = st.one_of(near_valid_bodies(), st.dictionaries(st.text(max_size=12), json_values, max_size=5))


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """Half the time a coherent request (its target, its type, a body of that type, perturbed); else anything."""
    if draw(st.booleans()):
        message_type = draw(st.sampled_from(sorted(VALID_BODIES)))
        target = draw(st.sampled_from([TARGET_OF[message_type]]).flatmap(mixed_case))
        return target, draw(mixed_case(message_type)), draw(near_valid_bodies(message_type))
    return draw(targets), draw(types), draw(bodies)


@MANY
@given(request=api_requests())
@example(("dms", "create_user", VALID_BODIES["create_user"]))
@example(("CRM", "Send_Pdf_File", VALID_BODIES["send_pdf_file"]))
@example(("crm", "send_pdf_file", {**VALID_BODIES["send_pdf_file"], "file_content": "a" * 2000}))
@example(("dms", "user_created", VALID_BODIES["create_user"]))
@example(("1c", "create_user", VALID_BODIES["create_user"]))
def test_build_request_accepts_catalog_requests_or_answers_4xx(request: tuple[str, str, dict[str, Any]]) -> None:
    target, message_type, body = request
    try:
        accepted = build_request(target, message_type, dict(body), max_pdf_bytes=1024, catalog=CATALOG, source="1c")
    except ApiError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code, exc.message)  # noqa: PT017 - either outcome is valid: pytest.raises cannot say so
        assert exc.code  # noqa: PT017
        assert exc.message  # noqa: PT017
        return
    assert isinstance(accepted, Accepted)
    assert accepted.routing_key in REQUEST_KEYS
    assert accepted.routing_key == f"1c.request.{accepted.target}.{accepted.message_type}"
    assert re.fullmatch(ID_PATTERN.rstrip("$") + r"\Z", accepted.request_id)
    if body.get("request_id"):
        assert accepted.request_id == body["request_id"]
    assert decode_envelope(accepted.envelope.encode()) == accepted.envelope
    assert CATALOG.routing_key(accepted.envelope) == accepted.routing_key
    # the same request built twice hashes the same (what makes a retried POST idempotent)
    again = build_request(
        target,
        message_type,
        {**body, "request_id": accepted.request_id},
        max_pdf_bytes=1024,
        catalog=CATALOG,
        source="1c",
    )
    assert again.payload_hash == accepted.payload_hash


# --- regressions: a trailing newline must not slip past a `$` -------------------------------------------------------


def test_a_routing_key_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="bad message type"):
        RoutingKey.parse("1c.request.dms.create_user\n")


def test_a_request_id_with_a_trailing_newline_is_a_422() -> None:
    with pytest.raises(ApiError) as caught:
        build_request(
            "dms",
            "create_user",
            {**VALID_BODIES["create_user"], "request_id": "R1\n"},
            max_pdf_bytes=1024,
            catalog=CATALOG,
            source="1c",
        )
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0),
        ("", 0),
        ("wait=10", 10),
        ("respond-async, wait=5", 5),
        ("wait=5, respond-async", 5),
        ("Wait = 7", 7),
        ('handling=lenient,wait="4"', 4),
        ("wait=3;foo=1", 3),
        # not understood, hence ignored (RFC 7240): not a number, a parameter of another preference, another name
        ("wait=soon", 0),
        ("wait=-1", 0),
        ("return=minimal; wait=3", 0),
        ("xwait=3", 0),
        ("wait=1e3", 0),
    ],
)
def test_prefer_wait_reads_the_wait_preference_and_ignores_what_it_does_not_understand(
    header: str | None, seconds: int
) -> None:
    assert prefer_wait(header) == seconds


@given(header=st.text(max_size=60))
def test_prefer_wait_never_raises_and_is_never_negative(header: str) -> None:
    assert prefer_wait(header) >= 0
