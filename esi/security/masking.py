"""Personal data in payloads and answers, masked for a reader who may not see it.

The console shows any request to an operator, but its personal data (names, e-mails, phone numbers, ...) only to a
client that may read that request through the API (the client that sent it; anyone with authentication off).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PERSONAL_FIELDS", "mask", "mask_text"]

#: field names (any case) whose values are personal data, wherever they appear in a payload or an answer
PERSONAL_FIELDS = frozenset(
    {
        "name",
        "full_name",
        "first_name",
        "last_name",
        "middle_name",
        "holder_name",
        "email",
        "phone",
        "address",
        "birth_date",
        "date_of_birth",
        "passport",
        "snils",
        "inn",
    }
)

#: longer strings are cut (a base64 PDF is not for reading on a page)
MAX_TEXT = 2000


def mask_text(value: str) -> str:
    """`Иванов Иван` → `И•••`; an e-mail keeps its domain: `i•••@example.com`."""
    local, at, domain = value.partition("@")
    if at and local:
        return f"{local[0]}•••@{domain}"
    return f"{value[:1]}•••" if value else value


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"{value[:80]}… ({len(value)} characters)"
    return value


def mask(value: Any, *, reveal: bool) -> Any:
    """`value` (a payload, an answer: JSON-like) with personal fields masked unless `reveal`; long texts cut."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not reveal and isinstance(key, str) and key.lower() in PERSONAL_FIELDS and item is not None:
                out[key] = mask_text(item) if isinstance(item, str) else "•••"
            else:
                out[key] = mask(item, reveal=reveal)
        return out
    if isinstance(value, list):
        return [mask(item, reveal=reveal) for item in value]
    return _cut(value)
