"""What only esi's own tests share: the repository's root and unique test identifiers.

The harness (isolated vhosts, throwaway PostgreSQL databases, esi run in subprocesses, serve_in_thread, free_port,
wait_until, rabbitmqctl) is public in `esi.testing`, for these tests, the benchmark and system packages alike.
"""

from __future__ import annotations

import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
