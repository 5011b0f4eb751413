"""The store: request tracking, the outbox and the inbox. SQLite by default, PostgreSQL by URL."""

from esi.store.db import Store
from esi.store.records import RequestRecord, RequestStatus

__all__ = ["RequestRecord", "RequestStatus", "Store"]
