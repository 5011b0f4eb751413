"""The operator console in a real browser: Playwright driving Debian's chromium against esi running in processes
(the API with authentication on, both adapters, both fakes), one browser and one system for the module.

Each page is photographed (the main ones in Russian too, `ru-*.png`, asked for with `Accept-Language: ru`): into
docs/console/ (the README shows the pictures) when `ESI_SCREENSHOTS=1`, as when
refreshing them (`ESI_SCREENSHOTS=1 make test PYTEST_ARGS=tests/browser`); otherwise into the test's temporary
directory, so that `make test` leaves the working tree as it found it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from esi.security import make_client_entry
from esi.testing import EsiSystem, Vhost, wait_until
from tests.support import ROOT, unique

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = (
    ROOT / "docs" / "console"
    if os.environ.get("ESI_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "esi-console-screenshots"
)
OPS = ("ops", "ops-console-pw")
VIEWER = ("viewer", "viewer-console-pw")
CLIENTS = {
    "clients": [
        {**make_client_entry(OPS[0], password=OPS[1], send=["*"], read=True, operator=True), "scopes": ["dlq:edit"]},
        make_client_entry(VIEWER[0], password=VIEWER[1], send=["*"], read=True),
    ]
}
HOSTILE = "<script>alert(1)</script>"

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsiSystem]:
    workdir = tmp_path_factory.mktemp("console")
    vhost = Vhost()
    esi = EsiSystem(
        workdir=workdir,
        amqp_url=vhost.url,
        database_url=f"sqlite:///{workdir}/esi.db",
        extra_env={
            "ESI_AUTH": "on",
            "ESI_CLIENTS_JSON": json.dumps(CLIENTS),
            "ESI_CONSOLE_SECRET": "browser-test-console-secret",
        },
    )
    try:
        esi.start_all()
        yield esi
        codes = esi.stop_all()
        assert all(code == 0 for code in codes.values()), (codes, esi.logs()[-3000:])
    except BaseException:
        print(esi.logs()[-6000:])
        esi.kill_all()
        raise
    finally:
        vhost.delete()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = "the browser tests drive Debian's chromium: apt-get install -y --no-install-recommends chromium"
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Session:
    """A browser tab logged in as one client, failing the test on any script error or CSP violation."""

    def __init__(
        self, browser: Any, system: EsiSystem, credentials: tuple[str, str], *, language: str = "en-US,en;q=0.9"
    ) -> None:
        self.context = browser.new_context(
            base_url=system.api_url,
            viewport={"width": 1360, "height": 900},
            http_credentials={"username": credentials[0], "password": credentials[1]},
            locale=language.split(",")[0],
            extra_http_headers={"Accept-Language": language},
        )
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def goto(self, path: str) -> Any:
        response = self.page.goto(path)
        assert response is not None
        return response

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


@pytest.fixture
def ops(browser: Any, system: EsiSystem) -> Iterator[Session]:
    session = Session(browser, system, OPS)
    yield session
    session.close()


@pytest.fixture
def ops_ru(browser: Any, system: EsiSystem) -> Iterator[Session]:
    """The operator with a Russian browser."""
    session = Session(browser, system, OPS, language="ru-RU,ru;q=0.9,en;q=0.5")
    yield session
    session.close()


@pytest.fixture
def viewer(browser: Any, system: EsiSystem) -> Iterator[Session]:
    session = Session(browser, system, VIEWER)
    yield session
    session.close()


# --- driving esi over its JSON API ---------------------------------------------------------------------------------


def send(system: EsiSystem, path: str, body: dict[str, Any], auth: tuple[str, str] = OPS) -> str:
    response = httpx.post(f"{system.api_url}{path}", json=body, auth=auth, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def settled(system: EsiSystem, request_id: str, *, timeout: float = 30) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        record = httpx.get(f"{system.api_url}/requests/{request_id}", params={"wait": 2}, auth=OPS, timeout=10).json()
        return record if record["status"] in ("completed", "failed", "dead_lettered") else None

    return wait_until(final, timeout=timeout, what=f"{request_id} to settle")


def timeline(system: EsiSystem, request_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{system.api_url}/requests/{request_id}/timeline", auth=OPS, timeout=10)
    return list(response.json()["events"])


def order(system: EsiSystem, **extra: Any) -> str:
    return send(
        system, "/send_to_crm", {"request_id": unique("ORDER"), "order_id": "ORD9876", "status": "Shipped", **extra}
    )


def user(system: EsiSystem, name: str = "Иванов Иван") -> str:
    return send(
        system,
        "/send_to_dms",
        {"request_id": unique("USER"), "user_id": unique("U"), "name": name, "email": "ivanov@example.com"},
    )


def dead_letter(system: EsiSystem, count: int = 1) -> list[str]:
    """`count` create_user requests the DMS refuses for good (HTTP 400: dead-lettered on the first try)."""
    system.fault("dms", {"status": 400})
    try:
        ids = [user(system) for _ in range(count)]
        for request_id in ids:
            assert settled(system, request_id)["status"] == "dead_lettered"
    finally:
        system.fault("dms", {})
    return ids


# --- the tests -----------------------------------------------------------------------------------------------------


def test_search_by_order_finds_the_orders_requests(system: EsiSystem, ops: Session) -> None:
    orders = [order(system), order(system, needs_policy_info=True, policy_number="POL-0001")]
    other = user(system)
    for request_id in [*orders, other]:
        assert settled(system, request_id)["status"] == "completed"
    ops.goto("/console/requests")
    ops.page.get_by_label("Request id or business key").fill("ORD9876")
    ops.page.get_by_role("button", name="Search").click()
    ops.page.wait_for_url(re.compile(r"q=ORD9876"))
    rows = ops.page.locator("table[data-results] tbody tr")
    found = set(rows.evaluate_all("rows => rows.map(r => r.dataset.requestId)"))
    assert set(orders) <= found
    assert other not in found
    assert ops.page.locator(f'tr[data-request-id="{orders[0]}"] .status').inner_text() == "completed"
    ops.shot("requests")
    ops.page.get_by_role("link", name=orders[1]).click()
    ops.page.wait_for_url(f"**/console/requests/{orders[1]}")
    assert ops.page.locator("[data-status]").inner_text() == "completed"


def test_a_requests_timeline_shows_every_hop(system: EsiSystem, ops: Session) -> None:
    request_id = order(system, needs_policy_info=True, policy_number="POL-0001")
    assert settled(system, request_id)["status"] == "completed"
    events = wait_until(
        lambda: (e := timeline(system, request_id)) and e[-1]["event"] == "completed" and e,
        timeout=10,
        what="the timeline's last hop",
    )
    ops.goto(f"/console/requests/{request_id}")
    steps = ops.page.locator("svg.sequence g.step")
    assert steps.count() == len(events)
    drawn = steps.evaluate_all("gs => gs.map(g => [g.dataset.event, g.dataset.from, g.dataset.to])")
    assert drawn[0] == ["accepted", "ext:1c", "esi:1c"]
    assert ["published", "esi:1c", "esi:crm"] in drawn  # 1C's request to the CRM adapter
    calls = [hop for hop in drawn if hop[0] == "external_call"]
    assert ["external_call", "esi:crm", "ext:crm"] in calls
    assert ["external_call", "esi:dms", "ext:dms"] in calls
    assert ["published", "esi:crm", "esi:dms"] in drawn  # the policy sub-request
    assert ["published", "esi:dms", "esi:crm"] in drawn  # and its answer
    assert ["published", "esi:crm", "esi:1c"] in drawn  # the answer to 1C
    assert drawn[-1] == ["completed", "esi:1c", "ext:1c"]
    lanes = ops.page.locator("svg.sequence g.lane text").all_text_contents()
    assert lanes == ["1C:Enterprise", "esi onec", "esi crm", "Creatio", "esi dms", "DMS"]
    labels = ops.page.locator("table[data-timeline] tr[data-event=external_call] td:last-child").all_inner_texts()
    assert any(re.fullmatch(r"set_order_status · [\d.]+ ms · ok", label) for label in labels), labels
    assert any(re.fullmatch(r"get_policy · [\d.]+ ms · ok", label) for label in labels), labels
    ops.shot("request")


def test_a_dead_letter_is_replayed_from_its_group_and_completes(system: EsiSystem, ops: Session) -> None:
    [request_id] = dead_letter(system)
    ops.goto("/console/dlq")
    row = ops.page.locator(f'tr[data-request-id="{request_id}"]')
    group = ops.page.locator("section.group", has=row)
    assert group.get_attribute("data-group-queue") == "dms_dead_letter_queue"
    assert group.get_attribute("data-group-code") == "http_400"
    assert int(group.locator("[data-count]").inner_text()) >= 1
    row.get_by_role("checkbox").check()
    ops.shot("dead-letters")
    group.locator('button[data-action="replay-selected"]').click()
    ops.page.wait_for_url(re.compile(r"/console/dlq\?done=replaying&n=1&job=\d+"))
    job = re.search(r"job=(\d+)", ops.page.url).group(1)  # type: ignore[union-attr]
    assert f"Replay job {job} started for 1 dead letter" in ops.page.locator(".notice").inner_text()
    # the jobs' progress updates in place (htmx), the page is not reloaded
    ops.page.evaluate("window.__not_reloaded = true")
    ops.page.locator(f'#dlq-jobs tr[data-job="{job}"][data-job-state="done"]').wait_for(timeout=30_000)
    assert ops.page.locator(f'#dlq-jobs tr[data-job="{job}"] [data-job-done]').inner_text() == "1"
    assert ops.page.evaluate("window.__not_reloaded") is True
    assert settled(system, request_id)["status"] == "completed"
    ops.goto(f"/console/requests/{request_id}")
    assert ops.page.locator("[data-status]").inner_text() == "completed"
    events = ops.page.locator("table[data-timeline] tr").evaluate_all("rows => rows.map(r => r.dataset.event)")
    assert "dead_lettered" in events
    assert events[-1] == "completed"


def test_a_purge_asks_for_confirmation_naming_how_many(system: EsiSystem, ops: Session) -> None:
    ids = dead_letter(system, count=2)
    ops.goto("/console/dlq")
    group = ops.page.locator("section.group", has=ops.page.locator(f'tr[data-request-id="{ids[0]}"]'))
    count = int(group.locator("[data-count]").inner_text())
    assert count >= 2
    ops.goto(f"/console/dlq/messages/{group.locator('tr[data-dead-letter]').first.get_attribute('data-dead-letter')}")
    assert ops.page.locator("[data-headers]").inner_text().count("x-esi-error-code") == 1
    ops.shot("dead-letter")
    ops.page.go_back()
    group.locator('button[data-action="purge-group"]').click()
    ops.page.wait_for_url("**/console/dlq/purge/confirm")
    assert ops.page.locator("h1").inner_text() == f"Purge {count} dead letters?"
    assert ops.page.locator("[data-purge-count]").inner_text() == str(count)
    confirm = ops.page.locator('button[data-action="purge-confirm"]')
    assert confirm.inner_text() == f"Purge {count} dead letters"
    ops.shot("confirm-purge")
    confirm.click()
    ops.page.wait_for_url(re.compile(rf"/console/dlq\?done=purging&n={count}&job=\d+"))
    job = re.search(r"job=(\d+)", ops.page.url).group(1)  # type: ignore[union-attr]
    ops.page.locator(f'#dlq-jobs tr[data-job="{job}"][data-job-state="done"]').wait_for(timeout=30_000)
    ops.goto("/console/dlq")
    assert ops.page.locator(f'tr[data-request-id="{ids[0]}"]').count() == 0
    audit = httpx.get(f"{system.api_url}/audit", params={"action": "dlq.purge"}, auth=OPS, timeout=10).json()
    assert audit["entries"][0]["client_id"] == "ops"
    assert audit["entries"][0]["count"] == count


def test_a_client_without_the_operator_scope_sees_no_action_and_gets_403(system: EsiSystem, viewer: Session) -> None:
    mine = send(
        system,
        "/send_to_dms",
        {"request_id": unique("VIEW"), "user_id": unique("U"), "name": "Зритель", "email": "v@example.com"},
        auth=VIEWER,
    )
    dead_letter(system)
    for path in ("/console", "/console/dlq", "/console/systems", f"/console/requests/{mine}"):
        assert viewer.goto(path).status == 200
        assert viewer.page.locator("button[data-action], form[method=post] button").count() == 0, path
        assert viewer.page.locator("header .who").inner_text().startswith("viewer")
    assert viewer.page.locator("[data-masked]").count() == 0  # its own request: nothing masked
    viewer.goto("/console/systems")
    viewer.shot("systems-read-only")
    for path, form in (
        ("/console/systems/dms/pause", {"reason": "not mine to pause"}),
        ("/console/dlq/replay", {"queue": "dms", "scope": "group", "code": "http_400"}),
    ):
        response = viewer.context.request.post(path, form=form)
        assert response.status == 403, (path, response.text())
    systems = httpx.get(f"{system.api_url}/systems", auth=OPS, timeout=10).json()["systems"]
    assert next(s for s in systems if s["code"] == "dms")["paused"] is None


def test_a_hostile_name_renders_as_text_and_runs_no_script(system: EsiSystem, ops: Session) -> None:
    request_id = user(system, name=HOSTILE)
    assert settled(system, request_id)["status"] == "completed"
    ops.goto(f"/console/requests/{request_id}")
    payload = ops.page.locator("[data-payload]").inner_text()
    assert HOSTILE in payload
    assert HOSTILE in ops.page.locator("[data-response]").inner_text()
    ops.goto(f"/console/requests?q={request_id}")
    assert ops.page.locator("table[data-results] tbody tr").count() == 1
    ops.page.wait_for_timeout(300)  # let any script that slipped through run: there must be none
    assert ops.dialogs == []
    assert ops.page.evaluate("document.querySelectorAll('script:not([src])').length") == 0


def test_an_operator_pauses_and_resumes_a_system_and_it_is_audited(system: EsiSystem, ops: Session) -> None:
    ops.goto("/console/systems")
    card = ops.page.locator('section[data-system="dms"]')
    card.get_by_label("For").fill("2h")
    card.get_by_label("Reason").fill("DMS upgrade")
    card.locator('button[data-action="pause"]').click()
    ops.page.wait_for_url(re.compile(r"done=paused"))
    try:
        assert card.locator("[data-paused]").count() == 1
        assert "DMS upgrade" in card.inner_text()
        pauses = httpx.get(f"{system.api_url}/systems", auth=OPS, timeout=10).json()["systems"]
        assert next(s for s in pauses if s["code"] == "dms")["paused"]["paused_by"] == "ops"
        assert "system.pause" in ops.page.locator("table[data-audit]").inner_text()
        ops.goto("/console")
        assert ops.page.locator('section[data-system="dms"] [data-paused]').count() == 1
        ops.goto("/console/systems")
        ops.shot("systems")
    finally:
        ops.goto("/console/systems")
        card.locator('button[data-action="resume"]').click()
    ops.page.wait_for_url(re.compile(r"done=resumed"))
    assert card.locator("[data-running]").count() == 1
    audit = httpx.get(f"{system.api_url}/audit", auth=OPS, timeout=10).json()["entries"]
    assert [(e["action"], e["client_id"], e["subject"]) for e in audit[:2]] == [
        ("system.resume", "ops", "dms"),
        ("system.pause", "ops", "dms"),
    ]


def test_the_overview_charts_each_system_and_refreshes_itself(system: EsiSystem, ops: Session) -> None:
    request_id = user(system)
    assert settled(system, request_id)["status"] == "completed"
    ops.goto("/console")
    assert ops.page.locator('meta[http-equiv="refresh"]').count() == 0  # no full-page refresh: htmx swaps the body
    assert ops.page.locator("#overview-live").get_attribute("hx-trigger") == "every 10s"
    before = int(ops.page.locator("[data-throughput]").inner_text().split()[0])
    assert before >= 1
    assert ops.page.locator("[data-open-breakers]").inner_text() == "0"
    for code in ("1c", "crm", "dms"):
        card = ops.page.locator(f'section[data-system="{code}"]')
        assert card.locator("svg rect[class^=bar-]").count() >= 1, code
        assert card.locator('[data-depth="ready"]').count() == 1, code
    assert ops.page.locator('section[data-system="dms"] figcaption').inner_text().count("completed") == 1
    assert ops.page.locator("[data-outbox-backlog]").inner_text().isdigit()
    assert ops.page.locator('tr[data-check="store"] td').nth(1).inner_text() == "ok"
    ops.shot("overview")
    ops.page.evaluate("window.__not_reloaded = true")
    assert settled(system, user(system))["status"] == "completed"
    wait_until(
        lambda: int(ops.page.locator("[data-throughput]").inner_text().split()[0]) > before,
        timeout=40,
        what="the last hour's count to update in place",
    )
    assert ops.page.evaluate("window.__not_reloaded") is True


def test_a_russian_browser_gets_the_console_in_russian(system: EsiSystem, ops_ru: Session) -> None:
    done = order(system)
    assert settled(system, done)["status"] == "completed"
    [dead] = dead_letter(system)
    page = ops_ru.page
    ops_ru.goto("/console")
    assert page.locator("html").get_attribute("lang") == "ru"
    assert page.locator("h1").inner_text() == "Обзор"
    nav = page.locator("header nav a").all_inner_texts()
    assert nav == ["Обзор", "Запросы", "Недоставленные сообщения", "Системы", "События"]
    assert page.locator('tr[data-check="store"] td').nth(1).inner_text() == "в норме"
    ops_ru.shot("ru-overview")
    ops_ru.goto("/console/requests")
    assert page.get_by_role("button", name="Найти").count() == 1
    assert page.locator(f'tr[data-request-id="{done}"] .status').inner_text() == "выполнен"
    ops_ru.shot("ru-requests")
    ops_ru.goto("/console/dlq")
    group = page.locator("section.group", has=page.locator(f'tr[data-request-id="{dead}"]'))
    assert group.locator('button[data-action="replay-selected"]').inner_text() == "Повторить выбранные"
    assert group.locator('button[data-action="purge-group"]').inner_text().startswith("Удалить все")
    row = group.locator(f'tr[data-request-id="{dead}"]')
    row.get_by_role("checkbox").check()
    ops_ru.shot("ru-dead-letters")
    row.get_by_role("checkbox").uncheck()
    group.locator('button[data-action="replay-selected"]').click()  # nothing selected: the guard says so in Russian
    assert group.locator('button[data-action="replay-selected"]').evaluate("b => b.validationMessage") == (
        "Сначала выберите недоставленные сообщения"
    )
    ops_ru.goto("/console/systems")
    card = page.locator('section[data-system="dms"]')
    assert card.locator('button[data-action="pause"]').inner_text().startswith("Приостановить")
    assert card.get_by_label("Причина").count() == 1
    ops_ru.shot("ru-systems")


def test_a_refused_message_is_corrected_on_its_page_and_completes(system: EsiSystem, ops: Session) -> None:
    user_id = unique("U")
    body = {"request_id": unique("EDIT"), "user_id": user_id, "name": "Правкин Пётр", "email": "p@refused.example"}
    request_id = send(system, "/send_to_dms", body)
    assert settled(system, request_id)["status"] == "failed"  # the DMS refused the e-mail's domain
    # the DMS adapter indexes its dead letter as it parks it; the answer that made the request "failed" may be
    # recorded by the API first: the listing is polled until the letter is there
    letters = wait_until(
        lambda: httpx.get(f"{system.api_url}/dlq", params={"key": user_id}, auth=OPS, timeout=10).json()["messages"],
        timeout=30,
        what="the dead letter in the listing",
    )
    [letter] = letters
    ops.goto(f"/console/dlq/messages/{letter['id']}")
    editor = ops.page.locator("[data-payload-editor]")
    payload = json.loads(editor.input_value())
    assert payload["email"] == "p@refused.example"

    editor.fill(json.dumps({**payload, "email": "not an address"}, ensure_ascii=False))
    ops.page.locator('button[data-action="edit-replay"]').click()
    error = ops.page.locator("[data-edit-error]")
    assert "email: 'not an address' does not match" in error.inner_text()
    assert json.loads(ops.page.locator("[data-payload-editor]").input_value())["email"] == "not an address"
    # the refused edit's page is answered 422, which the browser logs: expected, and the only error allowed
    assert [e for e in ops.errors if "422" in e] == ops.errors
    ops.errors.clear()
    ops.shot("dead-letter-edit-refused")

    ops.page.locator("[data-payload-editor]").fill(json.dumps({**payload, "email": "p@example.com"}))
    ops.page.locator('button[data-action="edit-replay"]').click()
    ops.page.wait_for_url(re.compile(rf"/console/requests/{request_id}\?done=edited"))
    assert settled(system, request_id)["status"] == "completed" or wait_until(
        lambda: settled(system, request_id)["status"] == "completed", timeout=30, what="the corrected request"
    )
    ops.goto(f"/console/requests/{request_id}")
    events = ops.page.locator("table[data-timeline] tr").evaluate_all("rows => rows.map(r => r.dataset.event)")
    assert "edited" in events
    audit = httpx.get(f"{system.api_url}/audit", params={"since": "1h"}, auth=OPS, timeout=10).json()["entries"]
    mine = {e["action"]: e for e in audit if e["subject"] == request_id}
    assert mine["dlq.edit_refused"]["client_id"] == "ops"
    assert "does not match" in mine["dlq.edit_refused"]["detail"]["error"]
    assert mine["dlq.edit"]["detail"]["before"]["email"] == "p•••@refused.example"
    assert mine["dlq.edit"]["detail"]["after"]["email"] == "p•••@example.com"
