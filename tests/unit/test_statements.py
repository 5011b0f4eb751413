"""The store's hot-path statements, run by the SQLite driver: same results and errors as through SQLAlchemy."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.exc import IntegrityError

from esi.store import schema
from esi.store.statements import INSERT_INBOX, MARK_SENT, SELECT_SEEN, Statement


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/s.db")
    schema.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_rows_written_by_the_driver_are_read_back_and_counted(engine) -> None:
    with engine.begin() as conn:
        rows = [{"consumer": "dms", "message_id": f"m{i}", "processed_at": "t"} for i in range(3)]
        assert INSERT_INBOX.run(conn, rows) == 3
        assert SELECT_SEEN.first(conn, {"consumer": "dms", "mid": "m1"}) == {"message_id": "m1"}
        assert SELECT_SEEN.first(conn, {"consumer": "crm", "mid": "m1"}) is None
        assert MARK_SENT.run(conn, [{"mid": "nothing", "at": "t"}]) == 0


def test_a_duplicate_raises_sqlalchemys_integrity_error_and_rolls_back_with_the_transaction(engine) -> None:
    row = {"consumer": "dms", "message_id": "m", "processed_at": "t"}
    with engine.begin() as conn:
        INSERT_INBOX.run(conn, row)
    with pytest.raises(IntegrityError), engine.begin() as conn:  # noqa: PT012 - the first insert must roll back with the failing second
        INSERT_INBOX.run(conn, {**row, "message_id": "other"})
        INSERT_INBOX.run(conn, row)
    with engine.connect() as conn:  # the transaction's first insert went with it
        assert SELECT_SEEN.first(conn, {"consumer": "dms", "mid": "other"}) is None


def test_a_value_built_into_a_statement_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="named parameter"):
        Statement(update(schema.outbox).values(sent_at="now"))
