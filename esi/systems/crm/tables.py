"""The CRM adapter's own tables: the newest status update applied to each order, so that an older update arriving
late (a retry, a replay, a second replica) is never applied over a newer one; and the poller's watermark of each
Creatio object, with the lease that lets one replica at a time poll it.

Declared here, with its migrations, and reached through the store's shared database (`SystemContext.database`);
the generic store knows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, Connection, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError

from esi.store import Database, Migrations
from esi.store.database import dumps, loads, now_iso

metadata = MetaData()

#: the newest update applied to each order, by when its source changed it (`update_order_status`'s
#: `status_changed_at`); named as when the core's store held it (its migration 6), so existing stores keep it
order_updates = Table(
    "esi_order_updates",
    metadata,
    #: the system and its own key of the order (`crm:<Creatio Id>`)
    Column("order_key", String(128), primary_key=True),
    #: UTC, ISO 8601 with microseconds: ordered as text
    Column("changed_at", String(40), nullable=False),
    Column("status", String(100), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

#: the poller's place in each Creatio object, and who polls it (`Watermarks`)
poll_watermarks = Table(
    "esi_crm_poll_watermarks",
    metadata,
    #: the Creatio object (`Order`, `Contact`)
    Column("entity", String(100), primary_key=True),
    #: the newest `ModifiedOn` taken (UTC, ISO 8601 with microseconds); NULL until the first poll stored one
    Column("modified_on", String(40), nullable=True),
    #: the Ids taken at exactly that `ModifiedOn` (a JSON list)
    Column("seen", Text, nullable=False, default="[]"),
    #: the replica polling the object, and until when it may (UTC ISO: ordered as text)
    Column("holder", String(200), nullable=False),
    Column("lease_until", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

MIGRATIONS = Migrations("crm", {1: [order_updates], 2: [poll_watermarks]})


@dataclass(frozen=True)
class OrderClaim:
    """Where an order's newest update stands (`OrderUpdates.claim`)."""

    #: whether the update that asked may be applied
    held: bool
    #: the newest update's time and status
    changed_at: str
    status: str


class OrderUpdates:
    """Compare-and-set of each order's newest update, over the store's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim_order_update(self, order_key: str, *, changed_at: str, status: str, message_id: str) -> OrderClaim:
        """Make this update (changed at `changed_at`, UTC ISO with microseconds) the order's newest, unless a newer
        one already is. The same message claiming again (a redelivery) holds it again.

        Returns the claim as it stands: `held` says whether this update may be applied; if not, `changed_at` and
        `status` are the newer update's.
        """
        u = order_updates
        row = {
            "order_key": order_key,
            "changed_at": changed_at,
            "status": status,
            "message_id": message_id,
            "updated_at": now_iso(),
        }

        def write(conn: Connection) -> OrderClaim:
            taken = conn.execute(
                update(u)
                .where(
                    u.c.order_key == order_key,
                    (u.c.changed_at < changed_at) | ((u.c.changed_at == changed_at) & (u.c.message_id == message_id)),
                )
                .values(**row)
            ).rowcount
            if not taken:
                current = conn.execute(
                    select(u.c.changed_at, u.c.status, u.c.message_id).where(u.c.order_key == order_key)
                ).first()
                if current is None:
                    conn.execute(insert(u).values(**row))  # a concurrent first claim fails on the key: tried again
                    taken = 1
                elif current.changed_at == changed_at:
                    taken = 1  # the same moment from another message: no order between them, both apply
                else:
                    return OrderClaim(held=False, changed_at=current.changed_at, status=current.status)
            return OrderClaim(held=True, changed_at=changed_at, status=status)

        try:
            return await self._db.write(write)
        except IntegrityError:  # another process claimed the order's first update at the same moment
            return await self._db.write(write)

    async def order_update(self, order_key: str) -> OrderClaim | None:
        """The newest update claimed for the order, if any (`held` is true)."""
        u = order_updates
        row = await self._db.read(
            lambda conn: conn.execute(select(u.c.changed_at, u.c.status).where(u.c.order_key == order_key)).first()
        )
        return None if row is None else OrderClaim(held=True, changed_at=row.changed_at, status=row.status)


# --- the poller's watermarks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredWatermark:
    """An object's watermark as stored: the newest `ModifiedOn` taken (None before the first) and the Ids taken at
    exactly that time."""

    modified_on: datetime | None
    seen: frozenset[str]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class Watermarks:
    """Each Creatio object's watermark, and a lease on it: one replica at a time polls an object.

    `claim` takes (or keeps) the lease for `lease_s` and returns the watermark; `advance` stores a new watermark and
    extends the lease, but only while the caller still holds it (a replica that lost its lease — paused too long —
    learns so there and stops, instead of moving another's watermark); `release` ends the lease at once (a clean
    stop), so that another replica takes over at its next poll rather than after the lease runs out.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, entity: str, holder: str, *, lease_s: float) -> StoredWatermark | None:
        """The object's watermark if `holder` now holds its lease (taken when free, expired or already its own);
        None while another replica holds it."""
        w = poll_watermarks
        now = datetime.now(UTC)
        until = _iso(now + timedelta(seconds=lease_s))

        def write(conn: Connection) -> StoredWatermark | None:
            taken = conn.execute(
                update(w)
                .where(w.c.entity == entity, (w.c.holder == holder) | (w.c.lease_until < _iso(now)))
                .values(holder=holder, lease_until=until)
            ).rowcount
            if not taken:
                exists = conn.execute(select(w.c.entity).where(w.c.entity == entity)).first()
                if exists is not None:
                    return None
                conn.execute(
                    insert(w).values(
                        entity=entity,
                        modified_on=None,
                        seen="[]",
                        holder=holder,
                        lease_until=until,
                        updated_at=_iso(now),
                    )
                )
            row = conn.execute(select(w.c.modified_on, w.c.seen).where(w.c.entity == entity)).one()
            return StoredWatermark(
                datetime.fromisoformat(row.modified_on) if row.modified_on else None, frozenset(loads(row.seen) or ())
            )

        try:
            return await self._db.write(write)
        except IntegrityError:  # another replica created the row at the same moment: it holds the lease
            return None

    async def advance(
        self, entity: str, holder: str, *, modified_on: datetime, seen: frozenset[str], lease_s: float
    ) -> bool:
        """Store the watermark and extend the lease, if `holder` still holds it; whether it did."""
        w = poll_watermarks
        now = datetime.now(UTC)
        statement = (
            update(w)
            .where(w.c.entity == entity, w.c.holder == holder)
            .values(
                modified_on=_iso(modified_on),
                seen=dumps(sorted(seen)),
                lease_until=_iso(now + timedelta(seconds=lease_s)),
                updated_at=_iso(now),
            )
        )
        return bool(await self._db.write(lambda conn: conn.execute(statement).rowcount))

    async def release(self, entity: str, holder: str) -> None:
        """End `holder`'s lease on the object now (nothing if it does not hold it)."""
        w = poll_watermarks
        now = _iso(datetime.now(UTC))
        statement = update(w).where(w.c.entity == entity, w.c.holder == holder).values(lease_until=now)
        await self._db.write(lambda conn: conn.execute(statement) and None)

    async def get(self, entity: str) -> StoredWatermark | None:
        """The object's stored watermark (None before its first poll)."""
        w = poll_watermarks
        row = await self._db.read(
            lambda conn: conn.execute(select(w.c.modified_on, w.c.seen).where(w.c.entity == entity)).first()
        )
        if row is None or row.modified_on is None:
            return None
        return StoredWatermark(datetime.fromisoformat(row.modified_on), frozenset(loads(row.seen) or ()))
