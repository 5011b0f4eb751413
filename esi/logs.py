"""Logging: JSON lines by default (a human format for a terminal), with the message's context on every line.

The consumer loop and the API set `request_id`, `message_id` and `routing_key` in a context variable; every log
line written while handling that message carries them. Secrets never reach a log: passwords, cookies, tokens,
`Authorization` headers and credentials in URLs are masked by the formatter, whatever the caller wrote.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

# never mutated in place: log_context() sets a new dict
_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("esi_log_context", default={})  # noqa: B039
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

_SECRET_PATTERNS = [
    # credentials in URLs: scheme://user:password@host
    (re.compile(r"(?P<pre>[a-z][a-z0-9+.\-]*://[^:/@\s]+:)[^@\s]+(?P<post>@)", re.I), r"\g<pre>***\g<post>"),
    # Authorization / Cookie / Set-Cookie / BPMCSRF / X-API-Key headers and their values
    (
        re.compile(
            r"(?P<pre>\b(?:authorization|proxy-authorization|cookie|set-cookie|bpmcsrf|x-api-key)\b[\"']?\s*[:=]\s*[\"']?)"
            r"[^\"'\n,;}]+",
            re.I,
        ),
        r"\g<pre>***",
    ),
    # key=value and "key": "value" pairs whose key says secret
    (
        re.compile(
            r"(?P<pre>[\"']?\b(?:password|passwd|pwd|secret|token|api_key|apikey|access_token|userpassword|"
            r"\.aspxauth|bpmloader)\b[\"']?\s*[:=]\s*[\"']?)[^\"'\s,;}&]+",
            re.I,
        ),
        r"\g<pre>***",
    ),
]


def redact(text: str) -> str:
    """Mask anything that looks like a secret."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add `values` to every log line written inside the block (and in tasks it starts)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_CONTEXT.get())


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        context = " ".join(
            f"{k}={getattr(record, k)}" for k in ("request_id", "routing_key") if getattr(record, k, None)
        )
        return f"{line} [{context}]" if context else line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
