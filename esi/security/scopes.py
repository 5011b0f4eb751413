"""Scopes and principals: what an authenticated client of the API may do, and the checks that refuse the rest.

Scopes are least privilege by default: a client may send only the `target:message_type` pairs it lists (`*` is a
wildcard on either side, a bare `*` means everything), reads outcomes only with the read scope — and then only of the
requests it sent itself: `Principal.client_id` is what the store records as a request's sender — and uses `/dlq` and
replay only with the operator scope.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from esi.errors import ApiError
from esi.messages.catalog import Catalog
from esi.security.quota import Quota

__all__ = [
    "Principal",
    "ScopeError",
    "SendScope",
    "require_events",
    "require_feed",
    "require_operator",
    "require_read",
    "require_send",
]

_SCOPE_PART_RE = re.compile(r"^(\*|[a-z0-9][a-z0-9_]{0,63})$")


class ScopeError(ValueError):
    """A send scope that is malformed, or names a target or message type the catalog does not know."""


@dataclass(frozen=True)
class SendScope:
    """`target:message_type`, either side possibly `*`."""

    target: str
    message_type: str

    @classmethod
    def parse(cls, text: str, catalog: Catalog | None = None) -> SendScope:
        """A scope such as `dms:create_user`, `crm:*` or `*` (any case is normalised), its target and message type
        checked against `catalog` (the registry's, at start-up); without one, only its form is checked."""
        if not isinstance(text, str):
            raise ScopeError(f"send scope {text!r} must be a string such as 'dms:create_user' or 'crm:*'")
        value = text.strip().lower()
        target, sep, message_type = value.partition(":")
        if not sep:
            if value != "*":
                raise ScopeError(f"send scope {text!r} must be '<target>:<message_type>' (or '*')")
            target, message_type = "*", "*"
        if not _SCOPE_PART_RE.match(target) or not _SCOPE_PART_RE.match(message_type):
            raise ScopeError(f"send scope {text!r} must be '<target>:<message_type>', each a name or '*'")
        if catalog is None:
            return cls(target, message_type)
        targets = catalog.targets()
        if target != "*" and target not in targets:
            raise ScopeError(f"send scope {text!r}: unknown target {target!r}; known: {', '.join(targets)}")
        if message_type != "*":
            known = sorted({t for tg in (targets if target == "*" else [target]) for t in catalog.requests_for(tg)})
            if message_type not in known:
                raise ScopeError(
                    f"send scope {text!r}: {message_type!r} is not a request of {target!r}; known: {', '.join(known)}"
                )
        return cls(target, message_type)

    def allows(self, target: str, message_type: str) -> bool:
        """Whether this scope covers `message_type` requests to `target` (both normalised)."""
        return self.target in ("*", target) and self.message_type in ("*", message_type)

    def __str__(self) -> str:
        return f"{self.target}:{self.message_type}"


@dataclass(frozen=True)
class Principal:
    """An authenticated client and what it may do."""

    client_id: str
    send_scopes: tuple[SendScope, ...] = ()
    can_read: bool = False
    is_operator: bool = False
    #: how fast and how much it may send (esi.security.quota); None: no limit
    quota: Quota | None = None
    #: the sources whose events it may hand over (scope `events:<source>`; `*`: any)
    event_sources: tuple[str, ...] = ()
    #: the pull feeds it may read and acknowledge (scope `feed:<subscriber>`; `*`: any)
    feeds: tuple[str, ...] = ()
    #: operator scopes beyond `operator` (`OPERATOR_SCOPES`): `dlq:edit` lets it edit a dead letter's payload
    scopes: frozenset[str] = frozenset()

    def can_send(self, target: str, message_type: str) -> bool:
        """Whether one of the client's scopes covers `message_type` requests to `target` (any case, any spaces)."""
        target = target.strip().lower()
        message_type = message_type.strip().lower()
        return any(scope.allows(target, message_type) for scope in self.send_scopes)


def require_send(principal: Principal, target: str, message_type: str) -> None:
    """403 unless `principal` may send `message_type` to `target` (call it with the validated, normalised pair)."""
    if not principal.can_send(target, message_type):
        raise ApiError(
            403, "forbidden", f"client {principal.client_id!r} may not send {message_type!r} requests to {target!r}"
        )


def require_read(principal: Principal, request_id: str, sender_client_id: str | None) -> None:
    """403 for a client without the read scope; 404 — exactly as for an unknown id — for another client's request."""
    if not principal.can_read:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not read the outcome of requests")
    if sender_client_id is None or not hmac.compare_digest(sender_client_id.encode(), principal.client_id.encode()):
        raise ApiError(404, "unknown_request", f"no request with request_id {request_id!r}")


def require_events(principal: Principal, source: str) -> None:
    """403 unless `principal` holds the scope `events:<source>`."""
    if "*" not in principal.event_sources and source not in principal.event_sources:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} lacks the scope events:{source}")


def require_feed(principal: Principal, subscriber: str) -> None:
    """403 unless `principal` holds the scope `feed:<subscriber>`."""
    if "*" not in principal.feeds and subscriber not in principal.feeds:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} lacks the scope feed:{subscriber}")


#: the operator scopes a client may be given besides the `operator` flag
DLQ_EDIT = "dlq:edit"
OPERATOR_SCOPES = frozenset({DLQ_EDIT})


def require_scope(principal: Principal, scope: str) -> None:
    """403 unless `principal` is an operator with `scope` too (`dlq:edit`)."""
    require_operator(principal)
    if scope not in principal.scopes:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} lacks the {scope!r} scope")


def require_operator(principal: Principal) -> None:
    """403 unless `principal` may use the operator endpoints (/dlq, replay)."""
    if not principal.is_operator:
        raise ApiError(403, "forbidden", f"client {principal.client_id!r} may not use the operator endpoints")
