"""esi — Enterprise System Integration: a message bus on RabbitMQ between 1C, Creatio (CRM) and a DMS.

The distribution is `esi-bus` on PyPI (`esi` is another project's name there); the import name is `esi`.
"""

from __future__ import annotations

#: the distribution's name (pyproject.toml's `[project] name`): what `pip install` and importlib.metadata know
DISTRIBUTION = "esi-bus"


def version() -> str:
    """The installed distribution's version (its metadata: pyproject.toml's `[project] version`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as metadata_version

    try:
        return metadata_version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "0.0.0"
