"""Quotas per client: how fast a client may send requests (`rate`, with a `burst`) and how many of its POSTs may be
under way at once (`in_flight`: accepted and still being served, e.g. waiting with `Prefer: wait`).

In the clients file (`esi.security.clients`)::

    {"id": "1c-erp", ..., "rate": {"per_second": 200, "burst": 400}, "in_flight": 256}
    {"id": "1c-night", ..., "rate": 50, "in_flight": 32}          # burst: twice the rate
    {"id": "trusted", ..., "rate": "unlimited", "in_flight": "unlimited"}

A client without these keys gets `DEFAULT_QUOTA`. `QuotaLimiter.admit` applies them: a token bucket per client for
the rate, a counter for the requests in flight, both local to the process. Each API replica enforces the quota
divided by the number of replicas (`ESI_API_REPLICAS`): no shared state on the hot path, at the price of a tolerance
— a load balancer that spreads one client's requests unevenly lets it reach its share on one replica before the
other (docs/security.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from esi import metrics
from esi.errors import ApiError

__all__ = ["DEFAULT_QUOTA", "UNLIMITED", "Quota", "QuotaLimiter", "parse_quota", "quota_entry"]


@dataclass(frozen=True)
class Quota:
    """A client's limits; None: unlimited."""

    #: requests per second, sustained
    rate: float | None = 200.0
    #: requests admitted at once after a pause (the bucket's size)
    burst: int | None = 400
    #: POSTs accepted and still being served
    in_flight: int | None = 256


DEFAULT_QUOTA = Quota()
UNLIMITED = Quota(None, None, None)


def _positive_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f'{where} must be a positive number or "unlimited", not {value!r}')
    return float(value)


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{where} must be a positive whole number or "unlimited", not {value!r}')
    return value


def parse_quota(entry: Mapping[str, Any], where: str) -> Quota:
    """The quota of a clients-file entry (`rate`, `in_flight`); `ValueError` naming `where` when malformed."""
    rate: float | None = DEFAULT_QUOTA.rate
    burst: int | None = DEFAULT_QUOTA.burst
    raw = entry.get("rate")
    if raw == "unlimited":
        rate = burst = None
    elif isinstance(raw, Mapping):
        unknown = sorted(str(k) for k in raw if k not in ("per_second", "burst"))
        if unknown or "per_second" not in raw:
            raise ValueError(f'{where}: rate must be {{"per_second": N, "burst": M}}, a number or "unlimited"')
        rate = _positive_number(raw["per_second"], f"{where}: rate.per_second")
        burst = _positive_int(raw["burst"], f"{where}: rate.burst") if "burst" in raw else max(1, math.ceil(2 * rate))
    elif raw is not None:
        rate = _positive_number(raw, f"{where}: rate")
        burst = max(1, math.ceil(2 * rate))
    if burst is not None and rate is not None and burst < 1:
        raise ValueError(f"{where}: rate.burst must be at least 1")
    raw = entry.get("in_flight")
    in_flight: int | None = DEFAULT_QUOTA.in_flight
    if raw == "unlimited":
        in_flight = None
    elif raw is not None:
        in_flight = _positive_int(raw, f"{where}: in_flight")
    return Quota(rate, burst, in_flight)


def quota_entry(
    rate: float | str | None = None, burst: int | None = None, in_flight: int | str | None = None
) -> dict[str, Any]:
    """The `rate` and `in_flight` keys of a clients-file entry (the defaults when not given; "unlimited" allowed)."""
    entry: dict[str, Any] = {}
    if rate == "unlimited":
        entry["rate"] = "unlimited"
    else:
        per_second = DEFAULT_QUOTA.rate if rate is None else float(rate)
        assert per_second is not None  # noqa: S101 - the default is a number; narrows for mypy
        if burst is None:
            burst = DEFAULT_QUOTA.burst if rate is None else max(1, math.ceil(2 * per_second))
        entry["rate"] = {"per_second": int(per_second) if per_second.is_integer() else per_second, "burst": burst}
    entry["in_flight"] = (
        "unlimited" if in_flight == "unlimited" else DEFAULT_QUOTA.in_flight if in_flight is None else in_flight
    )
    parse_quota(entry, "quota")  # the same checks as when loading
    return entry


class _Bucket:
    __slots__ = ("at", "in_flight", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.in_flight = 0


class QuotaLimiter:
    """Applies the clients' quotas in this process: each client's share is its quota ÷ `replicas`.

    `admit(client_id, quota)` is a context manager around the serving of one POST: it refuses (429, `quota_exceeded`)
    before anything is stored, and counts the request in flight until it is answered. `clock` is injectable.
    """

    def __init__(self, *, replicas: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.replicas = replicas
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def share(self, quota: Quota) -> Quota:
        """This replica's part of `quota`."""
        n = self.replicas
        return Quota(
            None if quota.rate is None else quota.rate / n,
            None if quota.burst is None else max(1, math.ceil(quota.burst / n)),
            None if quota.in_flight is None else max(1, math.ceil(quota.in_flight / n)),
        )

    def in_flight(self, client_id: str) -> int:
        bucket = self._buckets.get(client_id)
        return bucket.in_flight if bucket is not None else 0

    @contextmanager
    def admit(self, client_id: str, quota: Quota | None) -> Iterator[None]:
        """Serve one request of `client_id` within `quota` (None or unlimited: no limit), or raise the 429."""
        if quota is None or quota == UNLIMITED:
            yield
            return
        share = self.share(quota)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(client_id)
            if bucket is None:
                bucket = self._buckets[client_id] = _Bucket(float(share.burst or 0), now)
            if share.in_flight is not None and bucket.in_flight >= share.in_flight:
                refusal = self._refusal(client_id, "in_flight", quota, share, retry_after=1, in_flight=bucket.in_flight)
            elif share.rate is not None and share.burst is not None:
                bucket.tokens = min(float(share.burst), bucket.tokens + (now - bucket.at) * share.rate)
                bucket.at = now
                if bucket.tokens >= 1:
                    bucket.tokens -= 1
                    refusal = None
                else:
                    wait = max(1, math.ceil((1 - bucket.tokens) / share.rate))
                    refusal = self._refusal(client_id, "rate", quota, share, retry_after=wait)
            else:
                refusal = None
            if refusal is None:
                bucket.in_flight += 1
        if refusal is not None:
            raise refusal
        try:
            yield
        finally:
            with self._lock:
                bucket.in_flight -= 1

    def _refusal(
        self, client_id: str, which: str, quota: Quota, share: Quota, *, retry_after: int, in_flight: int = 0
    ) -> ApiError:
        metrics.child(metrics.QUOTA_REFUSED, client_id, which).inc()
        if which == "rate":
            detail: dict[str, Any] = {
                "quota": "rate",
                "limit": quota.rate,
                "burst": quota.burst,
                "replica_limit": share.rate,
                "replica_burst": share.burst,
            }
            message = f"client {client_id!r} exceeds its rate of {quota.rate:g} requests/s"
        else:
            detail = {"quota": "in_flight", "limit": quota.in_flight, "replica_limit": share.in_flight}
            detail["in_flight"] = in_flight
            message = f"client {client_id!r} has reached its limit of {quota.in_flight} requests in flight"
        detail.update({"replicas": self.replicas, "retry_after_s": retry_after})
        return ApiError(
            429,
            "quota_exceeded",
            f"{message}; nothing was stored: retry after {retry_after} s with the same request_id",
            details=[detail],
            headers={"Retry-After": str(retry_after)},
        )
