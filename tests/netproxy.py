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

``trace=Trace.load(...)`` replaces the token bucket with a measured link
(tests/traces/): the client→server direction delivers up to 1500 bytes at
each of the trace's opportunities, from ``start_s`` into the trace, looping
at its end, as Mahimahi's link shell does; an opportunity with nothing
waiting is lost. The proxy's kernel still acknowledges what it buffered
(see above): the link's queue is that buffer, as a cellular base station's
is. Its clock starts at the first connection, and reconnections share it.
``delay_s`` adds a fixed one-way delay to each direction (a radio link's
propagation and scheduling, e.g. 0.04); it reaches the publisher through
the server's replies (RTMP acks), not through TCP's own acknowledgements.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gzip
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamer.localserver import free_port

CHUNK = 16 * 1024
PACKET = 1500  # bytes one trace opportunity carries
TRACES = Path(__file__).parent / "traces"
READ_AT_ONCE_S = 0.002  # a read that returns this fast found its bytes already waiting


@dataclass(frozen=True)
class Trace:
    """A Mahimahi packet-delivery trace: opportunities in ms, looping every ``period_ms``."""

    name: str
    times_ms: tuple[int, ...]
    period_ms: int

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """A trace file, plain or gzipped; a bare name is looked up in tests/traces/."""
        path = Path(path)
        if not path.exists():
            path = TRACES / f"{path.name}.up.gz"
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as lines:
            times = tuple(int(line) for line in lines if line.strip())
        if not times or list(times) != sorted(times):
            raise ValueError(f"{path}: not a trace (ascending milliseconds, one per line)")
        return cls(path.name.split(".")[0], times, max(times[-1], 1))

    @property
    def seconds(self) -> float:
        return self.period_ms / 1000

    def kbps(self, start_s: float, seconds: float) -> float:
        """The mean capacity over ``[start_s, start_s + seconds)`` (looping), in kbit/s."""
        count, t, end = 0, start_s * 1000, (start_s + seconds) * 1000
        while t < end:
            base = (t // self.period_ms) * self.period_ms
            stop = min(end, base + self.period_ms)
            lo = bisect.bisect_left(self.times_ms, t - base)
            hi = bisect.bisect_left(self.times_ms, stop - base)
            count, t = count + hi - lo, stop
        return count * PACKET * 8 / seconds / 1000

    def longest_dark(self, start_s: float, seconds: float) -> float:
        """The longest time in ``[start_s, start_s + seconds)`` without a delivery opportunity
        (looping), in seconds: a frame on its way when the link goes dark waits that long
        whatever the publisher does."""
        at = [
            base + t
            for base in range(0, int(start_s + seconds) * 1000 + self.period_ms, self.period_ms)
            for t in self.times_ms[
                bisect.bisect_left(self.times_ms, start_s * 1000 - base) : bisect.bisect_left(
                    self.times_ms, (start_s + seconds) * 1000 - base
                )
            ]
        ]
        edges = [start_s * 1000, *at, (start_s + seconds) * 1000]
        return max(b - a for a, b in itertools.pairwise(edges)) / 1000

    def longest_outage(self, start_s: float, seconds: float, below_kbps: float = 100) -> float:
        """The longest stretch of ``[start_s, start_s + seconds)`` the link is as good as
        dark: no opportunity at all, or whole seconds under ``below_kbps`` (12 kbit/s is
        one packet a second, which takes 8 KiB in flight six seconds to deliver)."""
        run = longest = 0
        for second in range(int(start_s), int(start_s + seconds)):
            run = run + 1 if self.kbps(second, 1.0) < below_kbps else 0
            longest = max(longest, run)
        return max(float(longest), self.longest_dark(start_s, seconds))


class TraceLink:
    """Hands out a trace's delivery opportunities in real time (one proxy, all connections).

    As Mahimahi's link: each opportunity carries up to ``PACKET`` bytes, shared
    by whatever is waiting (a 400-byte audio frame does not use up a whole
    one), a piece larger than what is left takes the rest and goes on at the
    next, and an opportunity that passes with nothing waiting is lost.
    Capacity counts our bytes only, not TCP/IP headers (about 3 % more than
    Mahimahi carries).
    """

    def __init__(self, trace: Trace, start_s: float) -> None:
        self.trace = trace
        self.start_ms = start_s * 1000
        self._t0: float | None = None
        self._index = bisect.bisect_left(trace.times_ms, self.start_ms % trace.period_ms)
        self._base_ms = (self.start_ms // trace.period_ms) * trace.period_ms
        self._left = 0  # bytes left of the current opportunity
        self._left_at = 0.0  # when that opportunity came

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()

    def _next_at(self) -> float:
        """Monotonic time of the next opportunity (not consumed)."""
        assert self._t0 is not None
        if self._index >= len(self.trace.times_ms):
            self._index, self._base_ms = 0, self._base_ms + self.trace.period_ms
        at_ms = self._base_ms + self.trace.times_ms[self._index] - self.start_ms
        return self._t0 + at_ms / 1000

    async def grant(self, wanted: int, waiting_since: float) -> int:
        """Wait until some of ``wanted`` bytes may cross; how many (at least 1).

        ``waiting_since``: when these bytes were there to send; opportunities
        before it passed with nothing waiting and are lost (the proxy's own
        lag, by contrast, loses nothing).
        """
        self.start()
        if self._left and self._left_at >= waiting_since:
            used = min(wanted, self._left)
            self._left -= used
            return used
        while self._next_at() < waiting_since:
            self._index += 1
        if (wait := self._next_at() - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        # This opportunity, and all others already due while the bytes waited: a proxy that
        # fell behind (a busy machine) catches up in one step, not one per 1500 bytes.
        now, budget, at = time.monotonic(), 0, 0.0
        while not budget or (budget < wanted and self._next_at() <= now):
            at = self._next_at()
            self._index += 1
            budget += PACKET
        used = min(wanted, budget)
        self._left, self._left_at = budget - used, at
        return used


class ThrottleProxy:
    def __init__(
        self,
        upstream_port: int,
        rate: float | None = None,
        rcvbuf: int | None = None,
        *,
        trace: Trace | None = None,
        start_s: float = 0.0,
        delay_s: float = 0.0,
    ) -> None:
        self.upstream_port = upstream_port
        self.rcvbuf = rcvbuf
        self.link = TraceLink(trace, start_s) if trace is not None else None
        self.delay_s = delay_s
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
        if self.link is not None:
            self.link.start()
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        up = asyncio.create_task(self._pump(c_reader, s_writer, throttle=True))
        down = asyncio.create_task(self._pump(s_reader, c_writer, throttle=False))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.05 + self.delay_s)  # the other direction delivers what it holds
        for task in (up, down):
            task.cancel()
        for w in (c_writer, s_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool
    ) -> None:
        out = _DelayLine(writer, self.delay_s)
        bucket = _TokenBucket()
        got = time.monotonic()  # when the last read returned
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            try:
                while True:
                    await self._gate().wait()  # black hole: stop reading, hold everything
                    size = min(CHUNK, self.rcvbuf or CHUNK) if throttle else 65536
                    asked, previous = time.monotonic(), got
                    data = await reader.read(size)
                    if not data:
                        break
                    got = time.monotonic()
                    # Bytes a read finds at once came while the last ones were on their way:
                    # the link had something waiting since that read.
                    waiting_since = previous if got - asked < READ_AT_ONCE_S else got
                    await self._gate().wait()
                    if not throttle:
                        await out.send(data)
                        continue
                    if self.link is not None:
                        view = memoryview(data)
                        while view:
                            n = await self.link.grant(len(view), waiting_since)
                            await self._gate().wait()
                            await out.send(bytes(view[:n]))
                            self.forwarded += n
                            view = view[n:]
                    else:
                        for piece in _pieces(data, 1460):
                            if self.rate is not None:
                                await bucket.take(len(piece), self.rate)
                            await self._gate().wait()
                            await out.send(piece)
                            self.forwarded += len(piece)
                await out.send(b"")  # the end, after what is still on its way
            finally:
                await out.close()


class _TokenBucket:
    """``rate`` bytes/s with a 50 ms burst; the rate may change between calls."""

    def __init__(self) -> None:
        self.tokens, self.last = 0.0, time.monotonic()

    async def take(self, size: int, rate: float) -> None:
        while True:
            now = time.monotonic()
            burst = max(rate * 0.05, size)
            self.tokens = min(burst, self.tokens + (now - self.last) * rate)
            self.last = now
            if self.tokens >= size:
                self.tokens -= size
                return
            await asyncio.sleep((size - self.tokens) / rate)


class _DelayLine:
    """Writes each piece ``delay_s`` after it was sent (at once without a delay), in order;
    an empty piece ends the stream (``write_eof``)."""

    def __init__(self, writer: asyncio.StreamWriter, delay_s: float) -> None:
        self.writer, self.delay_s = writer, delay_s
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._deliver()) if delay_s > 0 else None

    async def send(self, data: bytes) -> None:
        if self.task is None:
            await self._write(data)
        else:
            self.queue.put_nowait((time.monotonic() + self.delay_s, data))

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()
        else:
            self.writer.write_eof()

    async def _deliver(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                due, data = await self.queue.get()
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await self._write(data)
                if not data:
                    return

    async def close(self) -> None:
        """Let what is on its way arrive (the end included), then stop."""
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), self.delay_s + 1)
            self.task.cancel()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
