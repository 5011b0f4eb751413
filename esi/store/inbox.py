"""The inbox: the ids of the messages each consumer has handled, so that a redelivery has no second effect.

It answers the bus's `Inbox` port (esi.bus.ports).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from esi.store import schema
from esi.store.database import Database, now_iso
from esi.store.statements import INSERT_INBOX, SELECT_SEEN


class Inbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, consumer: str, message_id: str) -> bool:
        """Whether `consumer` has already handled `message_id` (the inbox)."""
        return await self._db.lookup(SELECT_SEEN, {"consumer": consumer, "mid": message_id}) is not None

    async def record(self, consumer: str, message_id: str) -> None:
        """Remember that `consumer` handled `message_id`; recording it twice is harmless."""
        try:
            params = {"consumer": consumer, "message_id": message_id, "processed_at": now_iso()}
            await self._db.write(lambda conn: INSERT_INBOX.run(conn, params))
        except IntegrityError:
            pass  # already recorded by a concurrent duplicate

    async def prune(self, older_than: str) -> int:
        """Forget the ids handled before `older_than` (ISO time); how many."""
        i = schema.inbox
        return int(
            await self._db.write(lambda conn: conn.execute(i.delete().where(i.c.processed_at < older_than)).rowcount)
        )
