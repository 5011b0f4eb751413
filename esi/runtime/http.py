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


class CoalescingTransport:
    """A transport whose writes made in one step of the event loop go out as one: flushed at the loop's next turn.

    uvicorn writes a response's head and its body separately, each at once: two `send` calls and two TCP segments
    for every answer, and on a small one (a 202, a 429) the system calls are most of what serving it costs
    (py-spy of the API under a flood of refused sign-ins: the head's write alone was the largest item). A Starlette
    response sends both without yielding to the loop, so they meet in the buffer and leave in one call. `close`
    and `write_eof` flush first; everything else is the transport's own.
    """

    __slots__ = ("_buffer", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buffer.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand what was written to the transport now."""
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._buffer = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(b) for b in self._buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalescing_protocol() -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol on a `CoalescingTransport` (None without httptools: uvicorn's default then)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a locked dependency
        return None

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol


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
            http=_coalescing_protocol() or "auto",
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
