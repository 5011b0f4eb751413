from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esi.testing import EsiSystem, PgDatabase, Vhost


@pytest.fixture
def vhost() -> Iterator[Vhost]:
    v = Vhost()
    try:
        yield v
    finally:
        v.delete()


@pytest.fixture(scope="module")
def module_vhost() -> Iterator[Vhost]:
    v = Vhost()
    try:
        yield v
    finally:
        v.delete()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    db = PgDatabase()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/esi.db"
        return
    db = PgDatabase()
    try:
        yield db.url
    finally:
        db.drop()


def _system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, store: str
) -> Iterator[EsiSystem]:
    workdir = tmp_path_factory.mktemp("esi")
    v = Vhost()
    db = PgDatabase() if store == "postgres" else None
    system = EsiSystem(workdir=workdir, amqp_url=v.url, database_url=db.url if db else f"sqlite:///{workdir}/esi.db")
    try:
        system.start_all()
        yield system
        codes = system.stop_all()
        assert all(code == 0 for code in codes.values()), f"esi did not stop cleanly: {codes}\n{system.logs()[-3000:]}"
    except BaseException:
        print(system.logs()[-5000:])
        for p in system.processes.values():
            if p.proc is not None and p.proc.poll() is None:
                p.kill()
        raise
    finally:
        v.delete()
        if db is not None:
            db.drop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def esi_system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    """The whole system (three adapters and both fakes) on its own vhost and store, for a test module."""
    yield from _system(request, tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def esi_sqlite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    yield from _system(request, tmp_path_factory, "sqlite")
