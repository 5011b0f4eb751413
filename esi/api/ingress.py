"""Turning what 1C posts into a validated request: pure functions, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from esi.api.errors import ApiError, validation_details
from esi.errors import InvalidMessage
from esi.messages import Catalog, Envelope, Kind
from esi.messages.catalog import Upload, input_value
from esi.messages.envelope import ID_PATTERN, normalise_system

_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Accepted:
    """A request ready to be stored with its outgoing message."""

    request_id: str
    target: str
    message_type: str
    payload: BaseModel
    envelope: Envelope
    routing_key: str
    payload_hash: str


#: what 1C's JSON writer (`ЗаписьJSON` with a BOM) can put before the body
_BOM = b"\xef\xbb\xbf"


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object: UTF-8, with or without a byte order mark, any line ends."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def resolve_target(target: str, catalog: Catalog, *, source: str) -> str:
    """The code of a system `source` (the origin, 1C) may send requests to; 404 naming the known ones for anything
    else."""
    known = [t for t in catalog.targets() if t != source]
    try:
        code = normalise_system(target)
    except ValueError:
        code = None
    if code is None or code not in known:
        raise ApiError(404, "unknown_target", f"unknown target {target!r}; known targets: {', '.join(known)}")
    return code


def build_request(
    target: str,
    message_type: str,
    body: dict[str, Any],
    *,
    max_pdf_bytes: int,
    catalog: Catalog,
    source: str,
    status_for_unknown_type: int = 404,
) -> Accepted:
    """Validate a flat request body (the original's shape) sent by `source` (the origin) and build its envelope."""
    target = resolve_target(target, catalog, source=source)
    message_type = message_type.strip().lower()
    try:
        spec = catalog.request_spec(target, message_type)
    except InvalidMessage as exc:
        raise ApiError(status_for_unknown_type, "unknown_message_type", exc.message) from None
    fields = dict(body)
    request_id = fields.pop("request_id", None)
    if request_id is None or request_id == "":
        request_id = uuid.uuid4().hex
    elif not isinstance(request_id, str) or not _ID_RE.fullmatch(request_id):
        raise ApiError(
            422, "invalid_request_id", "request_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )
    if spec.upload is not None:
        check_file_base64(
            input_value(spec.model, spec.upload.content_field, fields), spec.upload, max_bytes=max_pdf_bytes
        )
    try:
        payload = spec.model.model_validate(fields)
    except ValidationError as exc:
        details = validation_details(list(exc.errors()))
        message = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
        raise ApiError(422, "validation_error", f"invalid {message_type} request: {message}", details=details) from None
    data = payload.model_dump(exclude_none=True)
    envelope = Envelope(
        request_id=request_id,
        source_system=source,
        target_system=target,
        message_type=message_type,
        payload=data,
        schema_version=spec.version,
    )
    digest = hashlib.sha256(orjson.dumps([target, message_type, data], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Accepted(
        request_id=request_id,
        target=target,
        message_type=message_type,
        payload=payload,
        envelope=envelope,
        routing_key=envelope.routing_key(Kind.REQUEST),
        payload_hash=digest,
    )


def check_file_base64(value: Any, upload: Upload, *, max_bytes: int) -> None:
    """Refuse what is not the expected kind of file or is too large, before anything else looks at it."""
    if not isinstance(value, str) or not value:
        return  # the schema names the missing field
    if len(value) > (max_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "file_too_large", f"the file exceeds the limit of {max_bytes} bytes")
    try:
        content = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"{upload.content_field} is not valid base64") from None
    check_file_bytes(content, upload, max_bytes=max_bytes)


def check_file_bytes(content: bytes, upload: Upload, *, max_bytes: int) -> None:
    if len(content) > max_bytes:
        raise ApiError(413, "file_too_large", f"the file is {len(content)} bytes; the limit is {max_bytes} bytes")
    if not content.startswith(upload.magic):
        kind = upload.media_type.rpartition("/")[2].upper()
        raise ApiError(
            422,
            f"not_a_{kind.lower()}",
            f"the file is not a {kind} (it does not start with {upload.magic.decode('latin-1')})",
        )


#: `wait=<delta-seconds>` among the preferences of a `Prefer` header (RFC 7240 §4.3)
_PREFER_WAIT = re.compile(r"(?:^|,)\s*wait\s*=\s*\"?(\d{1,9})\"?\s*(?=$|[,;])", re.IGNORECASE)


def prefer_wait(header: str | None) -> int:
    """The seconds a client asks a POST to wait for its request's outcome (`Prefer: wait=N`); 0 if it does not.

    As RFC 7240 asks, a preference that is not understood (a malformed value) is ignored, not refused.
    """
    if not header:
        return 0
    match = _PREFER_WAIT.search(header.strip())
    return int(match.group(1)) if match else 0
