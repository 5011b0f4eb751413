"""The CRM adapter's own table: the newest status update applied to each order, so that an older update arriving
late (a retry, a replay, a second replica) is never applied over a newer one.

Declared here, with its migrations, and reached through the store's shared database (`SystemContext.database`);
the generic store knows nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, Connection, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from esi.store import Database, Migrations
from esi.store.database import now_iso

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

MIGRATIONS = Migrations("crm", {1: [order_updates]})


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
