"""A scripted RTMP server on loopback, behaving like nginx-rtmp, SRS or mediamtx where they differ.

One ``ScriptedServer`` plays the server side of one connection and keeps
what the client sent. Run it in the test's own loop (``publish_to``), or on
a loop in a thread (``ServerThread``) for a client in another loop or the
real CLI. Every wait is bounded; it listens on 127.0.0.1 only.

Server flavours, all off by default:

- ``srs``: connect answered with transaction id 1 whatever was sent, Set
  Chunk Size 60000, an ECMA array in the connect info, ``onBWDone``,
  ``onFCPublish``, ``_result`` for releaseStream/FCPublish, and an
  unsolicited command with a Date (and other rare AMF0 types) in it.
- ``acks``: "nginx" acks at the client's window and restarts its counter at
  0xF0000000 (losing what came since its last ack); "srs" restarts there too
  but counts the bytes since its last ack; "none" never acknowledges.
  ``counter_start`` puts the counter near the restart, so it comes quickly.
- ``count_handshake``: the counter includes the 3073 handshake bytes, as
  mediamtx's does, so acks run ahead of what the client counts as sent.
- ``publish_error``: publish answered with ``_error`` instead of onStatus.
- ``read_rate``/``rcvbuf``: a server (or link) that takes bytes slowly.
- ``stop_reading_after``: after that many bytes it reads (and acks) nothing
  more but keeps the connection open, as a hung server application does; its
  socket buffers fill and then TCP takes nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamer.rtmp import amf0
from streamer.rtmp import message as m
from streamer.rtmp.chunk import ChunkReader, ChunkWriter, Message
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.url import parse_url

KEY = "room?token=abc"
RESTART = 0xF0000000  # where nginx-rtmp and SRS restart their received-byte counter
HANDSHAKE = 1 + 2 * 1536
SRS_CHUNK_SIZE = 60000
NGINX_READ = 4096 + 18


@dataclass
class ScriptedServer:
    """Plays the server side of a publish; what the client sent is kept in ``received``."""

    publish_status: tuple[str, str, str] = ("status", "NetStream.Publish.Start", "Started")
    publish_error: tuple[str, str] | None = None  # (code, description) in an _error
    connect_error: str | None = None
    after_publish: Callable[[ScriptedServer], Awaitable[None]] | None = None
    srs: bool = False
    acks: Literal["nginx", "srs", "none"] = "nginx"
    counter_start: int = 0
    count_handshake: bool = False
    read_rate: float | None = None  # bytes/s
    stop_reading_after: int | None = None  # bytes after the handshake
    # what happened
    received: list[Message] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() each was read
    commands: list[list[Any]] = field(default_factory=list)
    ack_values: list[int] = field(default_factory=list)
    bytes_read: int = 0  # media and all, after the handshake
    bytes_written: int = 0
    clean_end: bool | None = None  # the client left with a FIN (True) or a reset (False)
    publish_at: float | None = None  # time.monotonic() when publish came
    out: ChunkWriter = field(default_factory=ChunkWriter)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)  # the client answered a ping
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every read
    finished: threading.Event = field(default_factory=threading.Event)
    _ack_window: int = 0
    _counter: int = 0
    _last_ack: int = 0
    _sequence: int = 0
    _read_at: list[float] = field(default_factory=list)  # of each message in ``pending``

    # -- what it saw ----------------------------------------------------------------

    def media(self, type_id: int) -> list[Message]:
        return [x for x in self.received if x.type_id == type_id]

    def command_names(self) -> list[str]:
        return [c[0] for c in self.commands]

    def video_arrivals(self) -> list[tuple[float, int]]:
        """(when it was read, its timestamp in ms) of each coded video frame received."""
        return [
            (t, x.timestamp)
            for x, t in zip(self.received, self.arrived, strict=True)
            if x.type_id == m.VIDEO and x.payload[1:2] == b"\x01"
        ]

    def write_flv(self, path: Path) -> Path:
        """The audio and video received, as an FLV file a player (or PyAV) can open."""
        with path.open("wb") as out:
            out.write(b"FLV\x01\x05" + struct.pack(">II", 9, 0))
            for x in self.received:
                if x.type_id not in (m.AUDIO, m.VIDEO):
                    continue
                ts = x.timestamp & 0xFFFFFFFF
                header = bytes([x.type_id]) + len(x.payload).to_bytes(3, "big")
                header += (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([ts >> 24, 0, 0, 0])
                out.write(header + x.payload + struct.pack(">I", len(header) + len(x.payload)))
        return path

    async def read_up_to(self, count: int, timeout: float) -> None:
        """Wait until the server has read ``count`` bytes after the handshake."""
        async with asyncio.timeout(timeout):
            while self.bytes_read < count:
                self.progress.clear()
                await self.progress.wait()

    # -- sending ----------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        assert self.writer is not None
        data = self.out.encode(msg)
        self.bytes_written += len(data)
        self.writer.write(data)

    def reply(self, name: str, transaction: float, *args: Any, stream_id: int = 0) -> None:
        self.send(m.command(name, transaction, *args, stream_id=stream_id))

    def ping(self) -> None:
        """A ping request: once ``pong`` is set, the client has read all sent before it."""
        self.pong.clear()
        self.send(m.control(m.USER_CONTROL, struct.pack(">HI", m.PING_REQUEST, 1)))

    # -- acknowledgements ---------------------------------------------------------

    def _count(self, n: int) -> None:
        """Count received bytes and acknowledge the way the chosen server does."""
        if self.acks == "nginx":
            # nginx reads at most a chunk (4096 here) and its header at a time
            for piece in range(0, n, NGINX_READ):
                self._counter += min(NGINX_READ, n - piece)
                if self._counter >= RESTART:
                    self._counter = self._last_ack = 0
                if self._ack_window and self._counter - self._last_ack >= self._ack_window:
                    self._last_ack = self._counter
                    self._ack(self._counter)
            return
        self._counter += n
        delta = self._counter - self._last_ack
        if self.acks == "srs" and self._ack_window and delta >= self._ack_window:
            # SRS: the sequence number moves by the bytes since its last ack
            self._last_ack = self._counter
            sequence = self._sequence + delta
            self._sequence = delta if sequence > RESTART else sequence
            self._ack(self._sequence)

    def _ack(self, value: int) -> None:
        self.ack_values.append(value & 0xFFFFFFFF)
        self.send(m.acknowledgement(value))

    # -- the session ------------------------------------------------------------------

    async def next_message(self, chunks: ChunkReader, pending: list[Message]) -> Message:
        assert self.reader is not None
        while not pending:
            if self.stop_reading_after is not None and self.bytes_read >= self.stop_reading_after:
                await asyncio.Event().wait()  # hung: until the client or the test goes away
            data = await self.reader.read(16384 if self.read_rate else 65536)
            if not data:
                raise EOFError
            self.bytes_read += len(data)
            self.progress.set()
            messages = chunks.feed(data)
            for msg in messages:
                if msg.type_id == m.WINDOW_ACK_SIZE:
                    self._ack_window = m.u32(msg.payload)
                elif msg.type_id == m.USER_CONTROL and msg.payload[:2] == b"\x00\x07":
                    self.pong.set()
            self._count(len(data))
            pending.extend(messages)
            self._read_at.extend([time.monotonic()] * len(messages))
            if self.read_rate:  # a slow server: what it has not read waits in its socket
                await asyncio.sleep(len(data) / self.read_rate)
        msg = pending.pop(0)
        self.received.append(msg)
        self.arrived.append(self._read_at.pop(0))
        return msg

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._counter = self.counter_start + (HANDSHAKE if self.count_handshake else 0)
        self._last_ack = self._sequence = self._counter
        try:
            c0c1 = await reader.readexactly(1537)
            writer.write(b"\x03" + bytes(1536) + c0c1[1:])
            await reader.readexactly(1536)
            await self._session(ChunkReader(), [])
        except (EOFError, asyncio.IncompleteReadError):
            self.clean_end = True
        except ConnectionError:
            self.clean_end = False
        finally:
            self.done.set()
            writer.close()
            self.finished.set()

    async def _session(self, chunks: ChunkReader, pending: list[Message]) -> None:
        while True:
            msg = await self.next_message(chunks, pending)
            if msg.type_id != m.COMMAND_AMF0:
                continue
            cmd = amf0.decode(msg.payload)
            self.commands.append(cmd)
            name, txn = cmd[0], cmd[1]
            if name == "connect":
                self._on_connect(txn)
            elif name in ("releaseStream", "FCPublish") and self.srs:
                if name == "FCPublish":
                    self.reply("onFCPublish", 0, None, {"code": "NetStream.Publish.Start"})
                self.reply("_result", txn, None, amf0.UNDEFINED)
            elif name == "createStream":
                self.reply("_result", txn, None, 1.0)
            elif name == "publish":
                self.publish_at = time.monotonic()
                self._on_publish(txn)
                if self.after_publish:
                    await self.after_publish(self)
            elif name == "FCUnpublish":
                self.reply("onFCUnpublish", 0, None, {"code": "NetStream.Unpublish.Success"})
                self.reply("_result", txn, None, amf0.UNDEFINED)
            elif name == "deleteStream":
                self.done.set()

    def _on_connect(self, txn: float) -> None:
        if self.connect_error:
            error = {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": self.connect_error,
            }
            self.reply("_error", txn, None, error)
            return
        self.send(m.window_ack_size(2_500_000))
        self.send(m.control(m.SET_PEER_BANDWIDTH, struct.pack(">IB", 2_500_000, 2)))
        info: dict[str, Any] = {"level": "status", "code": "NetConnection.Connect.Success"}
        if not self.srs:
            self.reply("_result", txn, {"fmsVer": "FMS/3,0,1,123"}, info)
            return
        self.send(m.set_chunk_size(SRS_CHUNK_SIZE))
        self.out.set_chunk_size(SRS_CHUNK_SIZE)
        info["data"] = amf0.EcmaArray(version="3,5,3,888", srs_server="SRS/5.0.213")
        info["objectEncoding"] = 0.0
        # SRS: transaction id 1, whatever the client sent
        self.reply("_result", 1.0, {"fmsVer": "FMS/3,5,3,888", "capabilities": 127.0}, info)
        self.reply("onBWDone", 0, None)
        self.reply(
            "onServerInfo",
            0,
            None,
            amf0.TypedObject("srs.ServerInfo", time=amf0.Date(1.7e12), again=amf0.Reference(1)),
            amf0.Amf3(b"\x0a\x0b\x01\x01"),
        )

    def _on_publish(self, txn: float) -> None:
        if self.publish_error:
            code, description = self.publish_error
            info = {"level": "error", "code": code, "description": description}
            self.reply("_error", txn, None, info, stream_id=1)
            return
        if self.srs:
            self.reply("onFCPublish", 0, None, {"code": "NetStream.Publish.Start"}, stream_id=1)
        level, code, description = self.publish_status
        info = {"level": level, "code": code, "description": description}
        self.reply("onStatus", 0, None, info, stream_id=1)


@contextlib.asynccontextmanager
async def listening(server: ScriptedServer, rcvbuf: int | None = None) -> AsyncIterator[int]:
    """``server`` on a free 127.0.0.1 port in this loop; yields the port."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited on accept
    sock.bind(("127.0.0.1", 0))
    srv = await asyncio.start_server(server.handle, sock=sock)
    try:
        async with srv:
            yield sock.getsockname()[1]
    finally:
        srv.close()


async def publish_to(
    server: ScriptedServer,
    body: Callable[[RtmpPublisher], Awaitable[None]],
    timeout: float = 3.0,
    key: str = KEY,
) -> None:
    """Connect a real publisher to ``server``, run ``body``, close, wait for the server's end."""
    async with listening(server) as port:
        publisher = RtmpPublisher(parse_url(f"rtmp://127.0.0.1:{port}/live/{key}"), timeout=timeout)
        try:
            await publisher.connect()
            await body(publisher)
        finally:
            await publisher.close()
        await asyncio.wait_for(server.done.wait(), 5)


def run(coro: Awaitable[None], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


class ServerThread:
    """Scripted sessions on their own loop in a thread: one ``ScriptedServer`` per connection."""

    def __init__(self, make: Callable[[], ScriptedServer]) -> None:
        self.make = make
        self.sessions: list[ScriptedServer] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rtmp-server", daemon=True)

    def url(self, key: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("scripted server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    def wait_sessions(self, count: int, timeout: float) -> list[ScriptedServer]:
        """The first ``count`` sessions, once each has ended (bounded by ``timeout``)."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while len(self.sessions) < count and not deadline.is_set():
                deadline.wait(0.05)
            for session in self.sessions[:count]:
                session.finished.wait(max(0.0, timeout))
        finally:
            timer.cancel()
        return self.sessions[:count]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = self.make()
            self.sessions.append(session)
            await session.handle(reader, writer)

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = srv.sockets[0].getsockname()[1]
        self._ready.set()
        async with srv:
            await self._stop.wait()
            srv.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()


def frames(count: int, size: int, fps: float = 30.0) -> Iterator[tuple[int, bytes]]:
    """(timestamp ms, FLV AVC body) for ``count`` video frames, a keyframe every 60."""
    for i in range(count):
        key = i % 60 == 0
        yield round(i * 1000 / fps), bytes([0x17 if key else 0x27, 1, 0, 0, 0]) + bytes(size)
