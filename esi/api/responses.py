"""What the API's operations answer, for the OpenAPI document: every refusal an operation can give, declared from
one catalog, so that `/openapi.json` tells 1C's code generators the whole truth.

A `Refusal` is one error an operation can answer: its status, its `code` (the JSON error body, `ErrorBody`), when it
happens, an example message, and the headers it carries. A route lists the refusals of its own handler
(`Route.refusals`, one line); the route table (`esi.api.routes.table.add_routes`) adds those of the layers around
every handler — authentication (`AUTHENTICATION`), FastAPI's validation of the declared parameters and bodies
(`INVALID_PARAMETERS`), the unhandled failure (`INTERNAL_ERROR`) — and `refusals` turns them into OpenAPI responses:
one per status, the `ErrorBody` schema (a component, registered once), one example per code, the headers.

tests/integration/test_openapi_truth.py fails on any answer the document does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from esi.api.errors import ErrorBody, error_body
from esi.store import RequestRecord

__all__ = [
    "ACCEPTED",
    "AUTHENTICATION",
    "BACKLOG_FULL",
    "BODY_TOO_LARGE",
    "COUNT_CHANGED",
    "DEAD_LETTERS_UNAVAILABLE",
    "FILE_REFUSALS",
    "FORBIDDEN_OPERATOR",
    "FORBIDDEN_READ",
    "FORBIDDEN_SEND",
    "INTERNAL_ERROR",
    "INVALID_DURATION",
    "INVALID_EDIT",
    "INVALID_FILTER",
    "INVALID_PARAMETERS",
    "MALFORMED_MULTIPART",
    "READINESS",
    "REQUEST_ID_CONFLICT",
    "SENDING",
    "SETTLED_WITHIN_WAIT",
    "STORE_UNAVAILABLE",
    "UNKNOWN_DEAD_LETTER",
    "UNKNOWN_JOB",
    "UNKNOWN_MESSAGE_TYPE",
    "UNKNOWN_MESSAGE_TYPE_IN_BODY",
    "UNKNOWN_REQUEST",
    "UNKNOWN_SYSTEM",
    "UNKNOWN_TARGET",
    "UNREADABLE_BODY",
    "UNSUPPORTED_MEDIA_TYPE",
    "Readiness",
    "Refusal",
    "RequestAccepted",
    "refusals",
]

#: the response headers refusals carry, as OpenAPI header objects
_HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "seconds to wait before trying again (RFC 9110 §10.2.3)",
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {
        "description": "the schemes the API accepts (HTTP Basic; an API key in X-API-Key)",
        "schema": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Refusal:
    """One error an operation can answer: `status`, `code`, when it happens, an example `message` (and `details`),
    and the `headers` (names of `_HEADERS`) it always carries."""

    status: int
    code: str
    when: str
    message: str
    details: tuple[Any, ...] = ()
    headers: tuple[str, ...] = ()

    def example(self) -> dict[str, Any]:
        return {"summary": self.when, "value": error_body(self.code, self.message, list(self.details) or None)}


def refusals(*items: Refusal) -> dict[int | str, Any]:
    """`items` as OpenAPI responses, for FastAPI's `responses=`: one per status, with the `ErrorBody` schema, each
    code and when it is answered in the description, an example per refusal, and the headers (required when every
    refusal of the status carries them)."""
    by_status: dict[int, list[Refusal]] = {}
    for item in items:
        same = by_status.setdefault(item.status, [])
        if item not in same:
            same.append(item)
    responses: dict[int | str, Any] = {}
    for status in sorted(by_status):
        answers = by_status[status]
        whens: dict[str, list[str]] = {}
        examples: dict[str, Any] = {}
        for r in answers:
            whens.setdefault(r.code, []).append(r.when)
            count = len(whens[r.code])
            examples[r.code if count == 1 else f"{r.code} ({count})"] = r.example()
        response: dict[str, Any] = {
            "model": ErrorBody,
            "description": "\n".join(f"- `{code}`: {'; or '.join(texts)}" for code, texts in whens.items()),
            "content": {"application/json": {"examples": examples}},
        }
        names = sorted({name for r in answers for name in r.headers})
        if names:
            response["headers"] = {
                name: {**_HEADERS[name], "required": all(name in r.headers for r in answers)} for name in names
            }
        responses[status] = response
    return responses


# --- the layers around every handler (added by the route table) ---

#: an authenticated route: before its handler runs (`esi.api.auth`, `esi.security.auth`)
AUTHENTICATION = (
    Refusal(
        401,
        "unauthorized",
        "no credentials, malformed ones, or wrong ones",
        "authentication required: HTTP Basic, or an API key in the X-API-Key header",
        headers=("WWW-Authenticate",),
    ),
    Refusal(
        429,
        "sign_in_throttled",
        "too many failed sign-ins of this client id from this address: every attempt is refused until Retry-After "
        "has passed, a correct one too",
        "too many failed sign-ins of this client from this address: every attempt is refused for 60 s more",
        headers=("Retry-After",),
    ),
)

#: a route with parameters or a body model: FastAPI's validation of them, in the error shape (`esi.api.errors`)
INVALID_PARAMETERS = Refusal(
    422,
    "validation_error",
    "a parameter or the body does not match its declaration (one detail per problem)",
    "limit: Input should be less than or equal to 1000",
    details=({"field": "limit", "problem": "Input should be less than or equal to 1000"},),
)

#: a route with a body model: a body FastAPI cannot parse (not UTF-8, say) comes before its validation
UNREADABLE_BODY = Refusal(
    400, "http_error", "the body cannot be parsed as JSON (not UTF-8, say)", "There was an error parsing the body"
)

#: every route: a failure the service did not expect (it logs the details)
INTERNAL_ERROR = Refusal(
    500,
    "internal_error",
    "an unexpected failure; the service log has it",
    "internal error; the service log has the details",
)

#: every route: the store's database does not answer (a restart, a broken connection); nothing was stored
STORE_UNAVAILABLE = Refusal(
    503,
    "store_unavailable",
    "the store's database does not answer (it restarts, a connection broke): nothing was stored, retry after "
    "Retry-After with the same request_id",
    "the store does not answer; retry after 1 s",
    headers=("Retry-After",),
)

# --- the handlers' own refusals ---

FORBIDDEN_SEND = Refusal(
    403,
    "forbidden",
    "the client's send scopes do not cover this target and message type",
    "client '1c-erp' may not send 'create_user' requests to 'dms'",
)
FORBIDDEN_READ = Refusal(
    403, "forbidden", "the client has no read scope", "client '1c-erp' may not read the outcome of requests"
)
FORBIDDEN_OPERATOR = Refusal(
    403, "forbidden", "the client is not an operator", "client '1c-erp' may not use the operator endpoints"
)
UNKNOWN_REQUEST = Refusal(
    404,
    "unknown_request",
    "no request has this request_id — or another client sent it (the same answer, so that ids do not leak)",
    "no request with request_id 'R-1001'",
)
UNKNOWN_TARGET = Refusal(
    404, "unknown_target", "no system of that code takes requests", "unknown target 'erp'; known targets: crm, dms"
)
#: the generic route (`POST /requests/{target}/{message_type}`): the message type is in the path
UNKNOWN_MESSAGE_TYPE = Refusal(
    404,
    "unknown_message_type",
    "the target has no request of that type",
    "unknown message type 'x' for target 'dms'; known: create_user, get_policy_info",
)
UNKNOWN_SYSTEM = Refusal(
    404,
    "unknown_system",
    "no system of that code can be paused",
    "unknown system 'erp'; known: dms, crm",
)
UNKNOWN_DEAD_LETTER = Refusal(
    404, "unknown_dead_letter", "no dead letter has this id", "no dead letter with id 'dms:17'"
)
REQUEST_ID_CONFLICT = Refusal(
    409,
    "request_id_conflict",
    "the request_id was already used for a different request (the same request again is answered as before, with "
    "`X-Esi-Duplicate: true`)",
    "request_id 'R-1001' was already used for a different request (dms/create_user); use a new request_id",
)
INVALID_EDIT = Refusal(
    422,
    "invalid_edit",
    "the edited payload does not match its message type's JSON Schema (the schema's message says where), or the "
    "dead letter has no esi envelope",
    "the edit does not match the create_user schema: email: 'x' does not match '^[^@\\s]+@[^@\\s]+$'",
)
UNKNOWN_JOB = Refusal(404, "unknown_job", "no replay or purge job has this id", "no dead-letter job 17")
COUNT_CHANGED = Refusal(
    409,
    "count_changed",
    "as many dead letters as `expect` says no longer match: nothing was deleted",
    "3 dead letters match now, not 2; look again and confirm that count",
)
EMPTY_BODY = Refusal(400, "empty_body", "the body is empty", "the request body is empty; send a JSON object")
INVALID_JSON = Refusal(
    400,
    "invalid_json",
    "the body is not JSON, or not a JSON object (UTF-8, with or without a BOM)",
    "the request body is not valid JSON: unexpected character: line 1 column 1 (char 0)",
)
MALFORMED_MULTIPART = Refusal(
    400, "http_error", "a multipart/form-data body that cannot be read", "Did not find boundary character 45 at index 2"
)
BODY_TOO_LARGE = Refusal(413, "body_too_large", "the body exceeds the limit", "the request body exceeds 15728640 bytes")
UNSUPPORTED_MEDIA_TYPE = Refusal(
    415,
    "unsupported_media_type",
    "multipart/form-data for a request that carries no file",
    "multipart/form-data is accepted for send_pdf_file only",
)
INVALID_REQUEST = Refusal(
    422,
    "validation_error",
    "the request's fields do not match its schema (one detail per problem)",
    "invalid create_user request: email: Field required",
    details=({"field": "email", "problem": "Field required"},),
)
INVALID_REQUEST_ID = Refusal(
    422,
    "invalid_request_id",
    "request_id is not 1-128 letters, digits, '.', '_', ':' or '-'",
    "request_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
)
#: a send route (`POST /send_to_dms`): the message type is in the body
UNKNOWN_MESSAGE_TYPE_IN_BODY = Refusal(
    422,
    "unknown_message_type",
    "the body's `message_type` is no request of the target",
    "unknown message type 'x' for target 'dms'; known: create_user, get_policy_info",
)
QUOTA_EXCEEDED = Refusal(
    429,
    "quota_exceeded",
    "the client's quota (requests per second, or in flight) is reached: nothing was stored, retry after Retry-After "
    "with the same request_id",
    "client '1c-erp' has reached its limit of 256 requests in flight; nothing was stored: retry after 1 s with the "
    "same request_id",
    details=({"client": "1c-erp", "quota": "in_flight", "replicas": 2, "retry_after_s": 1},),
    headers=("Retry-After",),
)
BACKLOG_FULL = Refusal(
    503,
    "backlog_full",
    "more requests than ESI_OUTBOX_MAX_BACKLOG are waiting for the broker: nothing was stored, retry after Retry-After",
    "100000 or more requests are waiting for the broker; try again later",
    headers=("Retry-After",),
)
DEAD_LETTERS_UNAVAILABLE = Refusal(
    503,
    "unavailable",
    "this service has no access to the dead-letter queues",
    "dead-letter access is not configured on this service",
)
INVALID_FILTER = Refusal(
    422,
    "validation_error",
    "a filter that cannot be used (a duration such as `since=15m`, an unknown queue, no ids without `all`)",
    "since must be a duration such as 30d, 12h, 15m or seconds: '15 minutes'",
)

INVALID_DURATION = Refusal(
    422,
    "validation_error",
    "a duration that cannot be used (`for`, `since`: 90s, 15m, 2h, 7d)",
    "for must be a duration such as 30d, 12h, 15m or seconds: 'soon'",
)

#: what a request that carries a file can also be refused for (`send_pdf_file`)
FILE_REFUSALS = (
    Refusal(
        413, "file_too_large", "the file exceeds ESI_MAX_PDF_BYTES", "the file exceeds the limit of 10485760 bytes"
    ),
    Refusal(422, "invalid_base64", "the file's field is not base64", "file_content is not valid base64"),
    Refusal(
        422, "not_a_pdf", "the file is not of the request's kind", "the file is not a PDF (it does not start with %PDF)"
    ),
)

#: every POST that sends a request, after its body was read (`esi.api.ingress.build_request`, `RequestRoutes._accept`)
SENDING = (
    EMPTY_BODY,
    INVALID_JSON,
    FORBIDDEN_SEND,
    REQUEST_ID_CONFLICT,
    BODY_TOO_LARGE,
    INVALID_REQUEST,
    INVALID_REQUEST_ID,
    QUOTA_EXCEEDED,
    BACKLOG_FULL,
)


# --- what they answer when they do not refuse ---


class RequestAccepted(BaseModel):
    """A request stored with its outgoing message: it will be delivered."""

    status: Literal["accepted"]
    request_id: str = Field(description="the request's id (yours, or the one generated): read its outcome with it")


_DUPLICATE = {
    "X-Esi-Duplicate": {
        "description": "`true` when this request_id was accepted before with the same request: nothing new was stored",
        "schema": {"type": "string", "enum": ["true"]},
    }
}

#: the 202 of the POSTs that send a request
ACCEPTED: dict[int | str, Any] = {
    202: {
        "model": RequestAccepted,
        "description": "The request is stored and will be delivered.",
        "headers": _DUPLICATE,
    }
}

#: what the POSTs that send a request answer besides 202: the outcome, when `Prefer: wait=N` asked to wait for it
SETTLED_WITHIN_WAIT: dict[int | str, Any] = {
    200: {
        "model": RequestRecord,
        "description": (
            "With the header `Prefer: wait=N` (RFC 7240; N seconds, capped by ESI_MAX_WAIT): the request was "
            "completed, failed or dead-lettered within the wait, and this is its state, as "
            "`GET /requests/{request_id}` gives it. "
            "When the wait ends first, the answer is the 202."
        ),
        "headers": _DUPLICATE,
    }
}


class Readiness(BaseModel):
    """Whether the service can do its job, with one entry per dependency."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, Any]


#: `GET /readyz`: 200 when ready, 503 when not — the same body
READINESS: dict[int | str, Any] = {
    200: {"model": Readiness, "description": "Ready: every dependency answers."},
    503: {"model": Readiness, "description": "Not ready: `checks` tells which dependency does not answer."},
}
