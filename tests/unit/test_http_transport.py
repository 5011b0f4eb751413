"""The coalescing transport under esi's uvicorn: a response's head and body leave in one write."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from esi.runtime.http import CoalescingTransport, HttpServer


class Recorder:
    """A transport that records what it is asked to do."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.calls.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_of_one_step_leave_as_one_at_the_next_turn() -> None:
    inner = Recorder()
    t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
    t.write(b"{}")
    t.write(b"")
    assert inner.writes == []
    assert t.get_write_buffer_size() == len(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]
    # a later step's write is a write of its own
    t.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[-1] == b"next"
    assert t.get_extra_info("peername") == "info:peername"  # the rest is the transport's


async def test_close_and_write_eof_flush_first_and_abort_drops() -> None:
    inner = Recorder()
    t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert inner.calls == ["write", "close"]
    assert inner.writes == [b"last words"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing more
    assert inner.writes == [b"last words"]

    inner = Recorder()
    t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a")
    t.write_eof()
    assert inner.calls == ["write", "write_eof"]

    inner = Recorder()
    t = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"never sent")
    t.abort()
    await asyncio.sleep(0)
    assert inner.calls == ["abort"]


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_real_server_answers_whole_and_keeps_the_connection(free_port: int) -> None:
    app = FastAPI()

    @app.post("/x")
    async def x() -> JSONResponse:
        return JSONResponse({"status": "accepted"}, status_code=202)

    server = HttpServer(app, host="127.0.0.1", port=free_port, name="test")
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", free_port)
        for _ in range(2):  # keep-alive: the second request on the same connection
            writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
            # the whole answer in one read (a read between two sends would return the head alone)
            data = await asyncio.wait_for(reader.read(65536), 5)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 202")
            assert body == b'{"status":"accepted"}'
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
