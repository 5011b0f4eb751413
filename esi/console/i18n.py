"""The console's languages: English and Russian, from gettext catalogs made with Babel (esi/console/locale/,
`make catalogs`), chosen per request by its `Accept-Language`, else by `ESI_LANG`.

- `N_("Resumed %(system)s.", system=code)` marks a text in Python for extraction and keeps it untranslated until a
  page renders it in the request's language: a `Text` is a `str` (its English rendering, so an `ApiError` carrying
  one still answers the JSON API in English) that also remembers its msgid and parameters;
- `negotiate` picks the language of a request from its `Accept-Language` (q-values honoured);
- `translations` loads a language's compiled catalog (once per process).

CLI and API messages stay English: only the console's pages are translated.
"""

from __future__ import annotations

import functools
import gettext
from collections.abc import Mapping
from importlib import resources
from typing import Any

__all__ = ["DOMAIN", "LABELS", "LANGUAGES", "Text", "label", "negotiate", "translate", "translations"]

#: the languages the console speaks; the first is the catalogs' source language
LANGUAGES = ("en", "ru")
DOMAIN = "messages"


class Text(str):
    """A text marked for translation: as a `str`, its English rendering; `in_language` renders it in a language.

    Parameters that are `Text` themselves are translated too (a status inside a sentence)."""

    msgid: str
    params: Mapping[str, Any]

    def __new__(cls, msgid: str, params: Mapping[str, Any] | None = None) -> Text:
        params = dict(params or {})
        self = super().__new__(cls, msgid % params if params else msgid)
        self.msgid = msgid
        self.params = params
        return self

    def in_language(self, catalog: gettext.NullTranslations) -> str:
        text = catalog.gettext(self.msgid)
        if not self.params:
            return text
        return text % {k: translate(v, catalog) for k, v in self.params.items()}


def N_(msgid: str, **params: Any) -> Text:
    """Mark `msgid` for extraction; translated when a page renders it (`Text`)."""
    return Text(msgid, params)


def translate(value: Any, catalog: gettext.NullTranslations) -> Any:
    """A `Text` in the catalog's language; anything else as it is (the `t` filter of the templates)."""
    return value.in_language(catalog) if isinstance(value, Text) else value


#: the words the pages show for the values of statuses, outcomes, events, breaker states and error codes
LABELS: dict[str, Text] = {
    "accepted": N_("accepted"),
    "in_progress": N_("in progress"),
    "completed": N_("completed"),
    "failed": N_("failed"),
    "dead_lettered": N_("dead lettered"),
    "published": N_("published"),
    "consumed": N_("consumed"),
    "external_call": N_("external call"),
    "retry_scheduled": N_("retry scheduled"),
    "waiting": N_("waiting"),
    "delivered": N_("delivered"),
    "superseded": N_("superseded"),
    "pending": N_("pending"),
    "event_received": N_("event received"),
    "closed": N_("closed"),
    "open": N_("open"),
    "half_open": N_("half open"),
    "ok": N_("ok"),
    "down": N_("down"),
    # the error codes, as the heading of an error page
    "validation_error": N_("invalid request"),
    "forbidden": N_("forbidden"),
    "csrf_failed": N_("stale form"),
    "sign_in_failed": N_("sign-in failed"),
    "provider_unavailable": N_("sign-in service unavailable"),
    "unavailable": N_("unavailable"),
    "not_found": N_("not found"),
    "unknown_request": N_("unknown request"),
    "unknown_dead_letter": N_("unknown dead letter"),
    "unknown_system": N_("unknown system"),
}


def label(value: Any) -> Text | str:
    """A status, outcome, event or breaker state as a page shows it: a known one translatable, else with spaces."""
    text = str(value)
    return LABELS.get(text) or text.replace("_", " ")


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalog of `lang` (English: the msgids themselves)."""
    if lang == LANGUAGES[0]:
        return gettext.NullTranslations()
    mo = resources.files("esi.console") / "locale" / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with mo.open("rb") as file:
        return gettext.GNUTranslations(file)


def _quality(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def negotiate(accept_language: str | None, default: str) -> str:
    """The best of `LANGUAGES` for an `Accept-Language` header (`ru-RU,ru;q=0.9,en;q=0.8`): the highest q-value
    wins (a language's best among its tags: `ru`, `ru-RU`), the earlier entry on a tie; `*` stands for any language
    not named, the deployment's `default` first; `default` too when none is acceptable (q=0 refuses one)."""
    named: dict[str, tuple[float, int]] = {}
    wildcard: tuple[float, int] | None = None
    for position, part in enumerate((accept_language or "")[:1000].split(",")[:50]):
        tag, _, rest = part.strip().partition(";")
        q = 1.0
        for param in rest.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                q = _quality(value.strip())
        primary = tag.strip().lower().split("-")[0]
        if primary == "*":
            wildcard = wildcard or (q, position)
        elif primary in LANGUAGES:
            earlier = named.get(primary)
            named[primary] = (max(q, earlier[0]), earlier[1]) if earlier else (q, position)
    if wildcard is not None:
        for lang in LANGUAGES:
            named.setdefault(lang, wildcard)
    ranked = sorted((-q, position, lang != default, lang) for lang, (q, position) in named.items() if q > 0)
    return ranked[0][3] if ranked else default
