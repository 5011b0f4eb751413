"""AMQP header names are spelled once, in `esi.bus.headers`: anywhere else in esi a typo would be a silent miss."""

from __future__ import annotations

import re
from pathlib import Path

from esi.bus import headers

ROOT = Path(__file__).resolve().parents[2]
#: a quoted header name esi writes (`x-esi-…`) or the broker writes and esi reads (`x-death`, `x-…-death-…`, ...)
LITERAL = re.compile(r"""["'](x-esi-[a-z-]+|x-death|x-(?:first|last)-death-[a-z]+|x-delivery-count)["']""")


def _names() -> dict[str, str]:
    return {name: value for name, value in vars(headers).items() if isinstance(value, str) and name.isupper()}


def test_every_name_is_a_distinct_x_header() -> None:
    names = _names()
    assert names["ATTEMPT_HEADER"] == "x-esi-attempt"
    assert all(value.startswith("x-") and value == value.lower() for value in names.values())
    assert len(set(names.values())) == len(names), "two constants spell the same header"
    assert set(headers.FAILURE_HEADERS) <= set(names.values())


def test_no_header_name_is_spelled_outside_the_headers_module() -> None:
    own = Path(headers.__file__).resolve()
    found = []
    for path in sorted([*(ROOT / "esi").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        if path.resolve() == own or "contracts" in path.relative_to(ROOT).parts:
            continue  # esi/contracts writes AsyncAPI specification extensions (x-esi-version, ...), not headers
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if LITERAL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not found, "use esi.bus.headers instead of:\n" + "\n".join(found)
    assert LITERAL.search('out["x-esi-replay-count"] = 1')
    assert LITERAL.search("headers.get('x-death')")
