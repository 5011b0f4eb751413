"""One duration parser, `esi.config.parse_duration`, behind every duration esi reads: the settings, the CLI's
`--since` (and `--older-than`), the API's `since` and `for`. A week (`1w`) is a duration everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from esi.api.routes import dead_letters as dead_letter_routes
from esi.api.routes.systems import PauseRequest, SystemsRoutes
from esi.cli import app as cli
from esi.cli import dlq
from esi.config import parse_duration
from esi.errors import ApiError
from esi.security.scopes import Principal
from esi.systems.registry import load_registry

DURATIONS = [("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("1w", 7 * 86400.0)]
BAD = ["1y", "soon", "-2h"]
OPERATOR = Principal(client_id="ops", is_operator=True)


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_the_parser(text: str, seconds: float) -> None:
    assert parse_duration(text, name="X") == seconds


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_the_cli_since(text: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """`esi dlq list --since 1w` reaches the index with a week ago (no store here: the filter is what counts)."""
    seen: list[dict[str, Any]] = []

    class Ops:
        def filter(self, **given: Any) -> dict[str, Any]:
            seen.append(given)
            return given

        async def page(self, filters: Any, *, after: int | None, limit: int) -> tuple[list[Any], None]:
            return [], None

        async def count(self, filters: Any) -> int:
            return 0

    def with_store(action: Callable[[Any], Awaitable[Any]]) -> Any:
        return asyncio.run(action(Ops()))

    monkeypatch.setattr(dlq, "_with_store", with_store)
    result = CliRunner().invoke(cli, ["dlq", "list", "--since", text], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ago = datetime.now(UTC) - datetime.fromisoformat(seen[0]["since"])
    assert abs(ago.total_seconds() - seconds) < 60
    assert dlq._filters(None, None, text).since == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", BAD)
def test_a_bad_cli_since_exits_2_naming_it_before_connecting(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "_with_dead_letters", lambda action: pytest.fail("connected"))
    monkeypatch.setattr(dlq, "_with_store", lambda action: pytest.fail("connected"))
    for command in (["dlq", "list"], ["dlq", "purge", "--yes"], ["dlq", "replay", "--all"]):
        result = CliRunner().invoke(cli, [*command, "--since", text])
        assert result.exit_code == 2
        assert "--since must be" in result.stderr
        assert repr(text) in result.stderr


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_the_api_dead_letters_since(text: str, seconds: float) -> None:
    assert dead_letter_routes._filters(None, None, text).since == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", BAD)
def test_a_bad_api_since_is_a_422_naming_it(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        dead_letter_routes._filters(None, None, text)
    assert caught.value.status == 422
    assert caught.value.code == "validation_error"
    assert caught.value.message.startswith("since must be")
    assert repr(text) in caught.value.message


class _Store:
    """What the systems routes ask of the store's repositories (pauses, audit), recorded."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.pauses = self
        self.audit = SimpleNamespace(entries=self.entries, record=self.record)

    async def entries(self, **kwargs: Any) -> list[Any]:
        self.calls.append(kwargs)
        return []

    async def pause_system(self, system: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return SimpleNamespace(model_dump=lambda: kwargs)

    async def record(self, action: str, **kwargs: Any) -> None:
        pass


def _routes() -> tuple[SystemsRoutes, _Store]:
    store = _Store()
    return SystemsRoutes(store, load_registry()), store  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
async def test_the_api_audit_since_and_pause_for(text: str, seconds: float) -> None:
    routes, store = _routes()
    before = datetime.now(UTC)
    await routes.audit(None, OPERATOR, action=None, since=text, limit=10)  # type: ignore[arg-type]
    start = datetime.fromisoformat(store.calls[-1]["since"])
    assert before - timedelta(seconds=seconds + 5) < start <= before - timedelta(seconds=seconds) + timedelta(seconds=5)
    await routes.pause(None, OPERATOR, "dms", PauseRequest(**{"for": text}))  # type: ignore[arg-type]
    until = datetime.fromisoformat(store.calls[-1]["until"])
    assert before + timedelta(seconds=seconds) <= until < before + timedelta(seconds=seconds + 5)


@pytest.mark.parametrize("text", BAD)
async def test_a_bad_api_since_or_for_is_a_422_naming_it(text: str) -> None:
    routes, _ = _routes()
    with pytest.raises(ApiError) as caught:
        await routes.audit(None, OPERATOR, action=None, since=text, limit=10)  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert caught.value.message.startswith("since must be")
    with pytest.raises(ApiError) as caught:
        await routes.pause(None, OPERATOR, "dms", PauseRequest(**{"for": text}))  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert caught.value.message.startswith("for must be")


@pytest.mark.parametrize("text", ["off", "never", "0"])
async def test_a_pause_for_no_time_is_refused(text: str) -> None:
    """`off` is a duration of 0 to the settings; a pause for it would end at once, so it is refused instead."""
    routes, store = _routes()
    with pytest.raises(ApiError) as caught:
        await routes.pause(None, OPERATOR, "dms", PauseRequest(**{"for": text}))  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert "leave it out to pause until resumed" in caught.value.message
    assert store.calls == []
