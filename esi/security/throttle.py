"""Failed sign-ins: throttled per (client id, source address), before any password hashing; and which address a
request comes from when proxies stand in front of the API.

`SignInThrottle` counts the failed sign-ins of each (claimed client id, source address) pair. Once a pair has failed
`max_failures` times within `window` seconds, every further attempt of that pair — a correct password included — is
refused with 429 and `Retry-After` until `window` seconds after the failure that crossed the threshold, without
running argon2: a throttled attempt costs a dictionary lookup. Refusing a correct password too is deliberate: were
it accepted, the throttle would answer "right" or "throttled" for free, and an attacker could keep guessing through
it at no cost at all.

The pair is keyed on the client id as the caller claimed it, whether such a client exists or not: an unknown id is
counted, throttled and timed exactly as a known one (no enumeration of ids through the throttle either).

Memory is bounded: at most `max_entries` pairs are remembered (least recently failed first out), and an entry is
dropped once its window has passed. The throttle logs one line per pair and window when it starts refusing (not one
per refused attempt), and hands that event (`ThrottleEvent`) to whoever drains `events()`: the API writes it to the
audit log.

`TrustedProxies` picks the source address: the peer's, or — only when the peer is one of the configured proxies
(`ESI_TRUSTED_PROXIES`) — the address the proxies put in `X-Forwarded-For`, read from the right, skipping the
trusted proxies themselves (a client can write anything at the left of that header; only what the trusted proxies
appended is believed).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["SignInThrottle", "ThrottleEvent", "TrustedProxies"]

log = logging.getLogger(__name__)

#: what a pair is keyed on: (the claimed client id, the source address)
Pair = tuple[str, str]


@dataclass(frozen=True)
class ThrottleEvent:
    """A pair that has just started being refused: once per pair and window."""

    client_id: str
    address: str
    failures: int
    window_s: float
    retry_after_s: int


class _Entry:
    __slots__ = ("blocked_until", "failures", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.failures = 0
        #: set once the pair has failed `max_failures` times: refused until then
        self.blocked_until: float | None = None


class SignInThrottle:
    """Counts failed sign-ins per (client id, address); `retry_after` says whether a pair is refused now.

    Thread-safe: argon2 verifications run on worker threads and record their failures from there. `clock` is
    injectable for tests (monotonic seconds).
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.max_failures = max_failures
        self.window = window
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Pair, _Entry] = OrderedDict()
        self._events: deque[ThrottleEvent] = deque(maxlen=10_000)

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, client_id: str, address: str) -> int | None:
        """Seconds (rounded up, at least 1) until this pair may try again; None when it may try now."""
        if not self._entries:  # the common case: nobody is failing
            return None
        key = (client_id, address)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            now = self._clock()
            if entry.blocked_until is not None:
                if now < entry.blocked_until:
                    return max(1, math.ceil(entry.blocked_until - now))
                del self._entries[key]  # the window has passed: a clean slate
            elif now - entry.started >= self.window:
                del self._entries[key]
            return None

    def failed(self, client_id: str, address: str) -> None:
        """Record a failed sign-in of this pair (a wrong secret, an unknown client: what argon2 refused)."""
        key = (client_id, address)
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is None or (entry.blocked_until is None and now - entry.started >= self.window):
                entry = _Entry(now)
                self._entries[key] = entry
            elif entry.blocked_until is not None:
                if now < entry.blocked_until:
                    return  # already refused (a verification that started before the threshold was crossed)
                entry = _Entry(now)
                self._entries[key] = entry
            self._entries.move_to_end(key)
            entry.failures += 1
            event = None
            if entry.failures >= self.max_failures:
                entry.blocked_until = now + self.window
                event = ThrottleEvent(client_id, address, entry.failures, self.window, math.ceil(self.window))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        if event is not None:
            log.warning(
                "sign-in throttled: client %r from %s failed %d times within %g s; every attempt of this pair is "
                "refused (429) for %g s",
                client_id[:64],
                address,
                event.failures,
                self.window,
                self.window,
            )
            self._events.append(event)

    def succeeded(self, client_id: str, address: str) -> None:
        """A successful sign-in of a pair that was not refused forgets its failures."""
        if not self._entries:
            return
        with self._lock:
            entry = self._entries.get((client_id, address))
            if entry is not None and entry.blocked_until is None:
                del self._entries[(client_id, address)]

    def events(self) -> list[ThrottleEvent]:
        """The pairs that started being refused since the last call (each once per window)."""
        drained = []
        while self._events:
            try:
                drained.append(self._events.popleft())
            except IndexError:  # another thread drained it first
                break
        return drained


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` is believed (`ESI_TRUSTED_PROXIES`: addresses or CIDRs)."""

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        networks = []
        for text in proxies:
            text = text.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"ESI_TRUSTED_PROXIES: {text!r} is not an IP address or a CIDR") from None
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def source(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address a request comes from: the peer's, unless the peer is a trusted proxy and says whom it
        forwards for; then the rightmost `X-Forwarded-For` entry that is not a trusted proxy itself."""
        address = peer or "unknown"
        if not self._networks or not forwarded_for or not self.trusts(address):
            return address
        hops = [h.strip() for h in forwarded_for.split(",")]
        while hops and self.trusts(address):
            hop = hops.pop()
            if not hop:
                continue
            try:
                address = str(ipaddress.ip_address(hop))
            except ValueError:
                return address  # junk in the header: the last address we could believe
        return address
