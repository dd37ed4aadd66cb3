"""A TCP proxy on loopback that squeezes or black-holes the client→server direction.

It runs its own event loop in a thread so tests can drive it from anywhere.
The client→server direction goes through a token bucket (``rate`` bytes/s,
None = unlimited); a black hole stops forwarding in both directions but keeps
every socket open, like a dead link that TCP has not noticed yet. New
connections made during a black hole are held until it ends.

By default the proxy takes (and its kernel acknowledges at TCP level) about
200 kB the "link" has not carried yet: its autotuned receive buffer and its
reader's read-ahead, where a real bottleneck queues bytes unacknowledged.
``rcvbuf`` bounds both, so that only about ``3 * rcvbuf`` is acknowledged
early. It matters to a publisher that watches TCP's acknowledgements because
the server sends no RTMP ones; an RTMP server's acks show what it has read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from streamer.localserver import free_port

CHUNK = 16 * 1024


class ThrottleProxy:
    def __init__(
        self, upstream_port: int, rate: float | None = None, rcvbuf: int | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.rcvbuf = rcvbuf
        self.port = free_port()
        self.rate = rate
        self.forwarded = 0  # client→server bytes delivered upstream
        self._blackhole = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._resume_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    # -- control (any thread) ----------------------------------------------------

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate

    def blackhole(self, on: bool) -> None:
        resume = self._resume_event
        assert resume is not None, "start() the proxy first"
        self._blackhole = on
        self._loop.call_soon_threadsafe(resume.clear if on else resume.set)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    # -- the proxy ----------------------------------------------------------------

    def _gate(self) -> asyncio.Event:
        """Set while forwarding, cleared during a black hole."""
        assert self._resume_event is not None
        return self._resume_event

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        resume = self._resume_event = asyncio.Event()
        resume.set()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # inherited
        sock.bind(("127.0.0.1", self.port))
        # The reader reads ahead up to twice its limit.
        limit = self.rcvbuf // 2 if self.rcvbuf else 2**16
        server = await asyncio.start_server(self._handle, sock=sock, limit=limit)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        await self._gate().wait()
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        up = asyncio.create_task(self._pump(c_reader, s_writer, throttle=True))
        down = asyncio.create_task(self._pump(s_reader, c_writer, throttle=False))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.05)  # let the other direction deliver what it holds
        for task in (up, down):
            task.cancel()
        for w in (c_writer, s_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool
    ) -> None:
        tokens, last = 0.0, time.monotonic()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while True:
                await self._gate().wait()  # black hole: stop reading, hold everything
                data = await reader.read(min(CHUNK, self.rcvbuf or CHUNK) if throttle else 65536)
                if not data:
                    break
                await self._gate().wait()
                if throttle:
                    for piece in _pieces(data, 1460):
                        while True:
                            rate = self.rate
                            now = time.monotonic()
                            if rate is None:
                                break
                            burst = max(rate * 0.05, len(piece))
                            tokens = min(burst, tokens + (now - last) * rate)
                            last = now
                            if tokens >= len(piece):
                                tokens -= len(piece)
                                break
                            await asyncio.sleep((len(piece) - tokens) / rate)
                        await self._gate().wait()
                        writer.write(piece)
                        self.forwarded += len(piece)
                else:
                    writer.write(data)
                await writer.drain()
            writer.write_eof()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
