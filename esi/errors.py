"""The errors esi raises, and how the consumer loop treats them.

    EsiError
    ├── TransientError          retry later (timeouts, connection errors, 5xx/429/408, broker refusals)
    │   ├── SessionExpired      Creatio session gone: the client logs in again and retries once itself
    │   └── CircuitOpen         the system is known down or paused: no call made, the message goes back untried
    └── PermanentError          dead-letter now: retrying cannot help
        ├── InvalidMessage      not JSON, not UTF-8, wrong envelope, unknown type, payload failing its schema
        └── BusinessError       the external system refused (unknown order, unknown status, user refused)
            └── NotFound        the thing the message refers to does not exist

Each external system's client translates its own failures into these classes at its boundary; the consumer's
decision (`esi.bus.decision.decide`) alone chooses from the class whether to ack, retry or dead-letter.

`ApiError` stands apart: a request refused at the HTTP edge, with the status its caller gets.
"""

from __future__ import annotations

from typing import Any


class EsiError(Exception):
    """Base of every error esi raises on purpose."""

    #: short machine-readable code, carried in error responses and dead-letter headers
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, system: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: the external system the error comes from ("crm", "dms"), if any
        self.system = system

    def to_dict(self) -> dict[str, str | None]:
        return {"class": type(self).__name__, "code": self.code, "message": self.message, "system": self.system}


class TransientError(EsiError):
    """A failure that may heal by itself: the message is retried later.

    `retry_after`: seconds the system asked us to wait (`Retry-After` on a 429 or 503); the retry waits at least
    that long (the nearest rung of the ladder at or above it).
    """

    code = "transient"

    def __init__(
        self, message: str, *, code: str | None = None, system: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code, system=system)
        self.retry_after = retry_after


class SessionExpired(TransientError):
    """The external system's session has expired; the client renews it without spending a retry."""

    code = "session_expired"


class CircuitOpen(TransientError):
    """The system is known to be down (its circuit breaker is open) or paused for maintenance: the call was not
    made, and the message goes back to its queue without spending one of its tries."""

    code = "circuit_open"


class StoreUnavailable(TransientError):
    """The store's database does not answer: it restarts, a connection to it broke, its pool is exhausted. The
    store raises this instead of its driver's error (esi.store.database), so that the API answers 503 with
    Retry-After and a consumer retries the message, as for any transient failure."""

    code = "store_unavailable"


class PermanentError(EsiError):
    """A failure that retrying cannot fix: the message is dead-lettered at once."""

    code = "permanent"


class InvalidMessage(PermanentError):
    """The message itself is malformed: bad JSON, bad envelope, unknown type, invalid payload."""

    code = "invalid_message"


class BusinessError(PermanentError):
    """The external system understood the request and refused it."""

    code = "business_error"


class NotFound(BusinessError):
    """The entity a message refers to does not exist in the external system."""

    code = "not_found"


class ApiError(Exception):
    """A request refused at the HTTP edge: the status, code, message and headers its caller gets.

    Defined here rather than in `esi.api`, so that the request builder and authentication (`esi.security`) can refuse
    without importing the web framework; `esi.api.errors` turns it into the JSON error body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers
