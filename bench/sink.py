"""A minimal, fast SMTP sink for the benchmark: accepts everything, counts messages.

Runs in its own process so its CPU is not the relay's or the load generator's.
A raw asyncio Protocol (no aiosmtpd): the sink must never be what limits the
rate being measured. It announces PIPELINING and answers each command line.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import socket
from collections.abc import Callable
from typing import Any, cast

END_OF_DATA = b"\r\n.\r\n"


class SinkProtocol(asyncio.Protocol):
    def __init__(self, count: Any) -> None:
        self._count = count
        self._buffer = b""
        self._in_data = False
        self._context = b""
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(b"220 sink.bench ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        replies = []
        while True:
            if self._in_data:
                # Search with the bytes before (at first the DATA line's own CRLF, so an
                # empty body ends at once); keep the last 4 as context for the next read.
                seen = self._context + self._buffer
                end = seen.find(END_OF_DATA)
                if end < 0:
                    self._context, self._buffer = seen[-4:], b""
                    break
                self._buffer = seen[end + len(END_OF_DATA) :]
                self._in_data = False
                with self._count.get_lock():
                    self._count.value += 1
                replies.append(b"250 2.0.0 OK\r\n")
                continue
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0 or self._closing:
                break
            line, self._buffer = self._buffer[:line_end], self._buffer[line_end + 2 :]
            replies.append(self._answer(line[:4].upper()))
        if replies:
            self._transport.write(b"".join(replies))
        if self._closing:  # after the replies: a pipelined ".\r\nQUIT" still gets its 250
            self._transport.close()

    def _answer(self, verb: bytes) -> bytes:
        if verb in (b"EHLO", b"HELO"):
            return b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
        if verb == b"DATA":
            self._in_data, self._context = True, b"\r\n"
            return b"354 go on\r\n"
        if verb == b"QUIT":
            self._closing = True
            return b"221 bye\r\n"
        return b"250 OK\r\n"


def _serve(port: int, count: Any, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: SinkProtocol(count), "127.0.0.1", port, backlog=2048, reuse_address=True
        )
        ready.set()
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class CountingServer:
    """A server in a process of its own (``serve(port, count, ready)``) that counts what it
    takes: start() it (again after stop() to model an outage); ``count`` grows."""

    serve: Callable[[int, Any, multiprocessing.synchronize.Event], None]

    def __init__(self, port: int) -> None:
        self.port = port
        self._count = multiprocessing.Value("q", 0)
        self._process: multiprocessing.Process | None = None

    @property
    def count(self) -> int:
        return int(self._count.value)

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0

    def start(self) -> None:
        ready = multiprocessing.Event()
        self._process = multiprocessing.Process(
            target=type(self).serve, args=(self.port, self._count, ready), daemon=True
        )
        self._process.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            self._process = None


class Sink(CountingServer):
    """The SMTP sink: counts messages."""

    serve = staticmethod(_serve)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
