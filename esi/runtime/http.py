"""uvicorn inside esi's own event loop, for the API, the health port of adapters and the fakes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn inside our own event loop: the process's signal handling stays ours."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: FastAPI, *, host: str, port: int, name: str, ssl: dict[str, Any] | None = None) -> None:
        # a long keep-alive: 1C clients and proxies reuse connections, and a server closing an idle one just as the
        # client reuses it is a failed request for the client
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=10,
            timeout_keep_alive=75,
            **(ssl or {}),
        )
        self.name = name
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name=f"http-{self.name}")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError(f"{self.name}: HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        log.info("%s listening on http://%s:%d", self.name, self.server.config.host, self.server.config.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
