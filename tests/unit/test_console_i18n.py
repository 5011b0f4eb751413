"""The console in English and Russian: the catalogs (esi/console/locale, `make catalogs`) against the texts of the code
and the templates, the language a request gets (`Accept-Language`, else `ESI_LANG`), and pages in either language."""

from __future__ import annotations

import gettext
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from esi.api.app import ApiDeps, create_app
from esi.config import Settings
from esi.console import console_router
from esi.console.i18n import LANGUAGES, N_, label, negotiate, translate, translations
from esi.security import ClientRegistry, make_client_entry
from esi.store import Store
from esi.systems.registry import load_registry
from tests.support import ROOT

CONSOLE = ROOT / "esi" / "console"
LOCALE = CONSOLE / "locale"
POT = LOCALE / "messages.pot"
CLIENTS = [make_client_entry("ops", password="ops-pw", send=["*"], read=True, operator=True)]
OPS = ("ops", "ops-pw")
RU = {"Accept-Language": "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7"}
EN = {"Accept-Language": "en-GB,en;q=0.9"}


# --- the catalogs --------------------------------------------------------------------------------------------------


def _key(message: Message) -> tuple[Any, str | None]:
    return message.id, message.context


def _extracted() -> dict[tuple[Any, str | None], Message]:
    """The texts of the console's code and templates, extracted as `make catalogs` does (babel.cfg)."""
    cfg = LOCALE / "babel.cfg"
    with cfg.open(encoding="utf-8") as file:
        method_map, options_map = parse_mapping_cfg(file, str(cfg))
    catalog = Catalog()
    for filename, lineno, message, comments, context in extract_from_dir(str(CONSOLE), method_map, options_map):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return {_key(m): m for m in catalog if m.id}


def _read(path: Path) -> Catalog:
    with path.open("rb") as file:
        return read_po(file)


@pytest.fixture(scope="module")
def extracted() -> dict[tuple[Any, str | None], Message]:
    return _extracted()


def test_the_template_lists_exactly_the_texts_of_the_code_and_templates(
    extracted: dict[tuple[Any, str | None], Message],
) -> None:
    assert len(extracted) > 100  # the extraction found the templates' texts, not only the code's
    pot = {_key(m) for m in _read(POT) if m.id}
    assert pot == set(extracted), (
        "messages.pot is out of date: run `make catalogs`",
        {"missing": set(extracted) - pot, "stale": pot - set(extracted)},
    )


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_every_text_is_translated_not_fuzzy_and_keeps_its_placeholders(
    lang: str, extracted: dict[tuple[Any, str | None], Message]
) -> None:
    po = _read(LOCALE / lang / "LC_MESSAGES" / "messages.po")
    assert po.num_plurals == 3  # Russian: 1 сообщение, 2 сообщения, 5 сообщений
    problems = []
    for key in extracted:
        message = po.get(*key)
        strings = (message.string if isinstance(message.string, tuple) else (message.string,)) if message else ()
        if message is None or not all(strings):
            problems.append(f"not translated: {key[0]!r}")
        elif message.fuzzy:
            problems.append(f"fuzzy: {key[0]!r}")
    problems += [f"{message.id!r}: {error}" for message, errors in po.check() for error in errors]
    assert not problems, f"run `make catalogs` and translate in {lang}/LC_MESSAGES/messages.po:\n" + "\n".join(problems)


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_the_compiled_catalog_is_the_translations_one(lang: str) -> None:
    folder = LOCALE / lang / "LC_MESSAGES"
    compiled = io.BytesIO()
    write_mo(compiled, _read(folder / "messages.po"))
    assert (folder / "messages.mo").read_bytes() == compiled.getvalue(), "messages.mo is stale: run `make catalogs`"


# --- the language of a request -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "default", "chosen"),
    [
        (None, "en", "en"),
        (None, "ru", "ru"),
        ("", "ru", "ru"),
        ("ru", "en", "ru"),
        ("en", "ru", "en"),
        ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "en", "ru"),
        ("en-US,en;q=0.9,ru;q=0.8", "ru", "en"),
        ("en;q=0.5, ru;q=0.8", "en", "ru"),
        ("de-DE, ru;q=0.3", "en", "ru"),  # German is not spoken: the best language that is
        ("de-DE, fr", "ru", "ru"),
        ("*", "ru", "ru"),
        ("en;q=0.2, *;q=0.5", "en", "ru"),  # anything else rather than English
        ("ru;q=0, *", "ru", "en"),  # q=0: not Russian
        ("en;q=0.7, ru;q=0.7", "ru", "en"),  # a tie: the earlier
        ("EN-gb", "ru", "en"),
        ("ru;q=nonsense, en;q=0.1", "ru", "en"),
    ],
)
def test_the_best_language_of_accept_language(header: str | None, default: str, chosen: str) -> None:
    assert negotiate(header, default) == chosen


def test_a_marked_text_is_english_as_a_string_and_translated_with_its_parameters() -> None:
    text = N_("%(outcome)s: 1C reads the answer", outcome=label("completed"))
    assert text == "completed: 1C reads the answer"
    assert translate(text, translations("ru")) == "выполнен: 1С читает ответ"
    assert translate(text, translations("en")) == "completed: 1C reads the answer"
    assert translate("not marked", translations("ru")) == "not marked"
    assert isinstance(translations("en"), gettext.NullTranslations)


# --- pages ---------------------------------------------------------------------------------------------------------


async def _readiness() -> tuple[bool, dict[str, Any]]:
    return True, {"store": {"status": "ok", "latency_ms": 0.4}}


@pytest.fixture
async def console_for(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """A console app over one store: `console_for()` as esi serves it (ESI_LANG), `console_for(lang="ru")`."""
    async with await Store.open(f"sqlite:///{tmp_path}/console.db") as store:
        deps = ApiDeps(
            registry=load_registry(),
            store=store,
            on_accepted=lambda row: None,
            max_pdf_bytes=1024,
            clients=ClientRegistry.from_json(json.dumps({"clients": CLIENTS})),
            console_secret=b"k" * 32,
            readiness=_readiness,
        )
        clients: list[httpx.AsyncClient] = []

        def make(**router: Any) -> httpx.AsyncClient:
            app = create_app(deps)
            router.setdefault("lang", Settings().console_lang)  # as the composition root reads ESI_LANG
            app.include_router(console_router(deps, app.authenticator, **router))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://esi", auth=OPS)
            clients.append(client)
            return client

        yield make
        for client in clients:
            await client.aclose()


async def test_a_russian_browser_gets_russian_pages(console_for: Callable[..., httpx.AsyncClient]) -> None:
    console = console_for()
    overview = await console.get("/console", headers=RU)
    assert overview.status_code == 200
    assert '<html lang="ru">' in overview.text
    assert overview.headers["content-language"] == "ru"
    assert "Accept-Language" in overview.headers["vary"]
    for text in ("Обзор", "Запросы", "Недоставленные сообщения", "Системы", "эта реплика API", "в норме"):
        assert text in overview.text, text
    assert ">Overview<" not in overview.text
    systems = await console.get("/console/systems", headers=RU)
    for text in ("Приостановить", "работает", "Журнал аудита"):
        assert text in systems.text, text
    requests = await console.get("/console/requests", headers=RU)
    assert "Id запроса или бизнес-ключ" in requests.text
    assert "Найти" in requests.text


async def test_an_english_browser_gets_english_pages(console_for: Callable[..., httpx.AsyncClient]) -> None:
    console = console_for(lang="ru")
    overview = await console.get("/console", headers=EN)
    assert '<html lang="en">' in overview.text
    for text in ("Overview", "Requests", "Dead letters", "Systems", "this API replica is"):
        assert text in overview.text, text
    assert "Обзор" not in overview.text


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_without_accept_language_the_console_speaks_esi_lang(
    lang: str, console_for: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESI_LANG", lang)
    page = await console_for().get("/console/systems")
    assert f'<html lang="{lang}">' in page.text
    assert ("Системы" if lang == "ru" else "Systems") in page.text
    # a language the console does not speak falls back to ESI_LANG too
    page = await console_for().get("/console/systems", headers={"Accept-Language": "de-DE,fr;q=0.5"})
    assert f'<html lang="{lang}">' in page.text


async def test_errors_and_notices_in_russian_plural_forms_included(
    console_for: Callable[..., httpx.AsyncClient],
) -> None:
    console = console_for()
    bad = await console.get("/console/requests", params={"status": "bogus"}, headers=RU)
    assert bad.status_code == 422
    assert "неверный запрос" in bad.text
    assert "неизвестный статус" in bad.text
    missing = await console.get("/console/requests/NOPE", headers=RU)
    assert missing.status_code == 404
    assert "нет запроса с request_id" in missing.text
    assert "Ошибка · консоль esi" in missing.text
    english = await console.get("/console/requests/NOPE", headers=EN)
    assert "no request with request_id &#39;NOPE&#39;" in english.text
    for n, words in (
        (1, "1 недоставленное сообщение."),
        (3, "3 недоставленных сообщения."),
        (11, "11 недоставленных сообщений."),
    ):
        page = await console.get("/console/systems", params={"done": "purged", "n": n}, headers=RU)
        assert f"Навсегда удалено {words}" in page.text
    page = await console.get("/console/systems", params={"done": "purged", "n": 1}, headers=EN)
    assert "Purged 1 dead letter for good." in page.text
    page = await console.get("/console/systems", params={"done": "paused", "system": "<b>dms</b>"}, headers=RU)
    assert "Система &lt;b&gt;dms&lt;/b&gt; приостановлена." in page.text


def test_the_console_refuses_a_language_it_does_not_speak() -> None:
    from esi.console.core import Console

    with pytest.raises(ValueError, match="not 'de'"):
        Console(None, None, lang="de")  # type: ignore[arg-type]
