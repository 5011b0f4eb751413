"""Prometheus metrics (prometheus-client). Every service of a process shares one registry, served at /metrics.

Series:
    esi_messages_consumed_total{queue,message_type,outcome}    outcome: ok | duplicate | retried | dead_lettered
    esi_messages_published_total{message_type}                 confirmed publishes of envelopes
    esi_messages_retried_total{queue,message_type}
    esi_messages_dead_lettered_total{queue,message_type,error_class}
    esi_handler_duration_seconds{queue,message_type}           histogram, handling + confirmed publishes
    esi_external_call_duration_seconds{system,operation}       histogram
    esi_external_call_errors_total{system,operation,error_class}
    esi_external_calls_in_flight{system}                       calls under way (at most DMS/CREATIO_MAX_CONCURRENCY)
    esi_external_calls_waiting{system}                         calls held back by that limit
    esi_http_requests_total{route,method,status}
    esi_http_request_duration_seconds{route,method}            histogram
    esi_queue_messages{queue}                                  work, retry and dead-letter queue depths
    esi_outbox_backlog                                         requests accepted but not yet confirmed by the broker
    esi_circuit_open{system}                                   1 while the system's breaker is not closed (or paused)
    esi_circuit_transitions_total{system,to}                   breaker transitions, by the state entered
    esi_dependency_ready{service,dependency}                   1 while the dependency's readiness check passes, 0 not
                                                               (set by every /readyz and every ESI_READINESS_INTERVAL)
    esi_requests_settled_total{target,message_type,status}     requests answered to 1C: completed | failed
    esi_request_duration_seconds{target,message_type}          histogram, accepted to answered (end to end)
    esi_retention_deleted_total{table}                         rows removed by retention (ESI_REQUEST_RETENTION)
    esi_auth_failures_total{reason}                            refused sign-ins: missing | malformed | unknown_client |
                                                               wrong_secret | no_secret (throttled ones: below)
    esi_auth_throttled_total                                   sign-in attempts refused with 429 (too many failures of
                                                               one client id from one address; no hashing)
    esi_quota_refused_total{client,quota}                      requests refused with 429 over a client's quota:
                                                               rate | in_flight (nothing stored)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

CONSUMED = Counter(
    "esi_messages_consumed",
    "Messages taken off a work queue, by outcome",
    ["queue", "message_type", "outcome"],
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "esi_messages_published", "Envelopes published and confirmed by the broker", ["message_type"], registry=REGISTRY
)
RETRIED = Counter(
    "esi_messages_retried", "Messages parked in a retry hold queue", ["queue", "message_type"], registry=REGISTRY
)
DEAD_LETTERED = Counter(
    "esi_messages_dead_lettered",
    "Messages moved to a dead-letter queue",
    ["queue", "message_type", "error_class"],
    registry=REGISTRY,
)
HANDLER_DURATION = Histogram(
    "esi_handler_duration_seconds",
    "Time to handle a message, outgoing confirms included",
    ["queue", "message_type"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
EXTERNAL_DURATION = Histogram(
    "esi_external_call_duration_seconds",
    "Calls to external systems",
    ["system", "operation"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
EXTERNAL_ERRORS = Counter(
    "esi_external_call_errors",
    "Failed calls to external systems",
    ["system", "operation", "error_class"],
    registry=REGISTRY,
)
EXTERNAL_IN_FLIGHT = Gauge(
    "esi_external_calls_in_flight", "Calls to an external system under way", ["system"], registry=REGISTRY
)
EXTERNAL_WAITING = Gauge(
    "esi_external_calls_waiting", "Calls held back by the system's concurrency limit", ["system"], registry=REGISTRY
)
HTTP_REQUESTS = Counter("esi_http_requests", "HTTP requests served", ["route", "method", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram(
    "esi_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("esi_queue_messages", "Messages ready in a queue", ["queue"], registry=REGISTRY)
CIRCUIT_OPEN = Gauge(
    "esi_circuit_open",
    "1 while a system's circuit is open or paused, 0.5 half-open, 0 closed",
    ["system"],
    registry=REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "esi_circuit_transitions", "Circuit breaker transitions, by the state entered", ["system", "to"], registry=REGISTRY
)
OUTBOX_BACKLOG = Gauge("esi_outbox_backlog", "Accepted requests not yet confirmed by the broker", registry=REGISTRY)
DEPENDENCY_READY = Gauge(
    "esi_dependency_ready",
    "1 while a dependency's readiness check passes, 0 while it fails",
    ["service", "dependency"],
    registry=REGISTRY,
)
REQUESTS_SETTLED = Counter(
    "esi_requests_settled",
    "Requests answered to 1C, by their final state",
    ["target", "message_type", "status"],
    registry=REGISTRY,
)
#: end to end: minutes when a system is down and the retry ladder or a breaker holds the request
REQUEST_DURATION = Histogram(
    "esi_request_duration_seconds",
    "Time from a request's acceptance to its answer",
    ["target", "message_type"],
    buckets=(*_BUCKETS, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
#: what the store costs the database per request (issue 31): transactions and round trips, by kind
STORE_ROUND_TRIPS = Counter(
    "esi_store_round_trips",
    "Round trips to the store's database by kind: statement, begin, commit, rollback, ping (PostgreSQL); "
    "SQLite counts its commits only (its statements are calls into the library, not round trips)",
    ["kind"],
    registry=REGISTRY,
)
STORE_WRITES = Counter(
    "esi_store_writes", "Writes handed to the store's group commits (several share a commit)", registry=REGISTRY
)
STORE_CONFLICT_RETRIES = Counter(
    "esi_store_conflict_retries",
    "Store transactions run again after PostgreSQL ended them for a deadlock or a serialization failure",
    registry=REGISTRY,
)
SQLITE_LOCK_WAITS = Counter(
    "esi_sqlite_lock_waits",
    "SQLite write transactions that found another process holding the write lock and waited for it",
    registry=REGISTRY,
)
SQLITE_LOCK_WAIT_SECONDS = Counter(
    "esi_sqlite_lock_wait_seconds",
    "Time SQLite write transactions waited for another process's write lock",
    registry=REGISTRY,
)
RETENTION_DELETED = Counter("esi_retention_deleted", "Rows deleted by the retention pass", ["table"], registry=REGISTRY)
AUTH_FAILURES = Counter("esi_auth_failures", "Refused sign-ins (401), by reason", ["reason"], registry=REGISTRY)
AUTH_THROTTLED = Counter(
    "esi_auth_throttled",
    "Sign-in attempts refused (429) after too many failures, before any hashing",
    registry=REGISTRY,
)
QUOTA_REFUSED = Counter(
    "esi_quota_refused",
    "Requests refused (429) over a client's quota, by quota",
    ["client", "quota"],
    registry=REGISTRY,
)


#: children of labelled metrics counted once per message or request, looked up once: `labels()` validates,
#: converts and locks on every call (the label values are queues, message types, routes and statuses: bounded)
_CHILDREN: dict[tuple[Any, ...], Any] = {}


EVENTS_TAKEN = Counter(
    "esi_events",
    "Events taken in (new) or refused as a repeat of a change already taken (duplicate), by source and type",
    ["source", "type", "outcome"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "esi_deliveries",
    "Events handed to a subscriber, by outcome: delivered, superseded (an older change after a newer one), failed",
    ["subscriber", "outcome"],
    registry=REGISTRY,
)
FEED_LAG = Gauge(
    "esi_feed_lag_messages",
    "Messages in a pull feed its reader has not acknowledged",
    ["subscriber"],
    registry=REGISTRY,
)
FEED_LAG_SECONDS = Gauge(
    "esi_feed_lag_seconds",
    "Age of the oldest message in a pull feed its reader has not acknowledged",
    ["subscriber"],
    registry=REGISTRY,
)


def child(metric: Counter | Histogram, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once (for the hot paths)."""
    found = _CHILDREN.get((metric, *labels))
    if found is None:
        found = _CHILDREN[(metric, *labels)] = metric.labels(*labels)
    return found


def published(message_type: str) -> None:
    """Count an envelope published and confirmed."""
    child(PUBLISHED, message_type).inc()


def request_settled(*, target: str, message_type: str, status: str, created_at: str) -> None:
    """Count a request answered to 1C and observe its end-to-end time (`created_at`: the store's ISO time)."""
    child(REQUESTS_SETTLED, target, message_type, status).inc()
    try:
        accepted = datetime.fromisoformat(created_at)
    except (TypeError, ValueError):
        return
    elapsed = (datetime.now(UTC) - accepted).total_seconds()
    child(REQUEST_DURATION, target, message_type).observe(max(elapsed, 0.0))
