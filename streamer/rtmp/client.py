"""Our asyncio RTMP publisher.

FFmpeg's RTMP output blocks forever on a stalled server and hides what it
drops; this one never waits longer than its timeouts, writes only as fast as
the socket accepts (small transport buffer + drain, little unsent data in the
kernel) so the send queue above it sees the real link, and turns every server
refusal into PublishRejected with the server's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import socket
import ssl
import struct
import termios
from typing import Any, TypeVar

import structlog

from streamer.exc import (
    ConnectFailed,
    ConnectionLost,
    ProtocolError,
    PublishRejected,
    StreamerError,
)
from streamer.net.stall import StallDetector
from streamer.rtmp import amf0
from streamer.rtmp import message as msg
from streamer.rtmp.acks import AckCounter
from streamer.rtmp.chunk import ChunkReader, ChunkWriter, Message
from streamer.rtmp.handshake import RTMP_VERSION, client_handshake, make_c0c1
from streamer.rtmp.inflight import InFlightWindow
from streamer.rtmp.url import RtmpUrl

log = structlog.get_logger("streamer.rtmp")
_T = TypeVar("_T")

CHUNK_SIZE = 4096
WRITE_BUFFER_HIGH = 64 * 1024
# We ask the server to acknowledge every ACK_WINDOW bytes: its acks prove the
# stream reaches the server application, not just a kernel buffer on the way.
ACK_WINDOW = 4 * 1024
# nginx-rtmp forgets what it received since its last ack when its counter
# restarts: at most one ack window plus one read (a chunk and its header).
RESTART_GAP = ACK_WINDOW + CHUNK_SIZE + 64
# Unsent bytes the kernel may hold (Linux TCP_NOTSENT_LOWAT): without it the
# send buffer grows to megabytes and hides seconds of video from the drop policy.
NOTSENT_LOWAT = 32 * 1024
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# Linux SIOCOUTQ: bytes in the socket's send queue the peer has not acknowledged.
SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
# How often the kernel's view is looked at while waiting, for a server that never acks.
KERNEL_POLL = 0.005
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305: try the next address after this long
CLOSE_LINGER = 2.0  # seconds to read the server's last words before closing
# A silent TLS server after this long (or 3 TCP connects) may be plain RTMP:
# nginx-rtmp and SRS wait for 1537 bytes, longer than a ClientHello.
PLAIN_PROBE_AFTER = 0.5
# nginx-rtmp answers a publish its access rules refuse with Publish.Start and
# then hangs up (its live module runs before its access module): a Start is
# final once the connection outlives it this long. Both come in one flight.
PUBLISH_SETTLE = 0.1
WATCHDOG_PERIOD = 0.5
FLASH_VERSION = "FMLE/3.0 (compatible; streamer)"


INSECURE_WARNING = "TLS certificate verification is OFF (--insecure)"
_insecure_warned = False

# OpenSSL's X509_V_ERR_* codes that deserve their own advice.
_CERT_NAME_MISMATCH = frozenset({62, 63, 64})  # host name, e-mail, IP address
_CERT_TIME = frozenset({9, 10})  # not yet valid, expired
# What OpenSSL says when the first bytes back are not a TLS record.
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)


def tls_context(insecure: bool = False) -> ssl.SSLContext:
    """The TLS settings for rtmps://.

    Verified by default: the system CA store (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` override it), host name checked against the URL's host,
    which is also sent as SNI. ``insecure`` accepts any certificate (the
    connection is still encrypted) and says so in the log, once per process.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        global _insecure_warned
        if not _insecure_warned:
            _insecure_warned = True
            log.warning(INSECURE_WARNING)
    return context


def _tls_failure(exc: Exception, host: str, port: int, timeout: float) -> ConnectFailed:
    """One line a user can act on for a TLS handshake that did not succeed."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(exc.verify_message or exc.reason or exc).rstrip(".")
        if exc.verify_code in _CERT_NAME_MISMATCH:
            return ConnectFailed(
                f"TLS certificate of {host} does not match the host name in the URL: {why}; "
                "use the host name the certificate was issued for, "
                "or --insecure to skip the check"
            )
        if exc.verify_code in _CERT_TIME:
            return ConnectFailed(
                f"TLS certificate of {host} is not valid now: {why}; "
                "check this device's clock (date), or --insecure to skip the check"
            )
        return ConnectFailed(
            f"TLS certificate of {host} is not trusted: {why}; "
            "use a certificate from a public CA, or --insecure to skip the check"
        )
    hint = "is this an rtmps:// port? plain rtmp:// usually listens on 1935, rtmps:// on 443"
    if isinstance(exc, TimeoutError):
        return ConnectFailed(f"{where} did not answer TLS within {timeout:g} s; {hint}")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in _NOT_TLS_REASONS:
            return ConnectFailed(f"{where} did not answer TLS (it sent something else); {hint}")
        return ConnectFailed(f"TLS handshake with {where} failed: {reason}")
    if isinstance(exc, OSError):
        return ConnectFailed(
            f"{where} closed the connection during the TLS handshake (did not answer TLS); {hint}"
        )
    return ConnectFailed(f"TLS handshake with {where} failed: {exc}")


def _connect_reason(exc: OSError) -> str:
    """Why TCP failed, in words; happy eyeballs folds one error per address into one."""
    codes = {exc.errno} if exc.errno else set(map(int, re.findall(r"\[Errno (\d+)\]", str(exc))))
    if len(codes) != 1:
        return str(exc)
    code = codes.pop()
    reason = os.strerror(code).lower()
    if code == errno.ECONNREFUSED:
        reason += " (is the RTMP server running and listening on this port?)"
    return reason


def _consume(task: asyncio.Future[Any]) -> None:
    """Done-callback of a task given up on: its outcome is not wanted."""
    if not task.cancelled():
        task.exception()


async def _speaks_plain_rtmp(host: str, port: int) -> bool:
    """Whether the server answers an RTMP C0+C1 with S0: an rtmp:// port, not rtmps://."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(make_c0c1())
        return await reader.read(1) == bytes((RTMP_VERSION,))
    except OSError:
        return False
    finally:
        writer.transport.abort()


class RtmpPublisher:
    """One publishing session: connect → publish → send media → unpublish."""

    def __init__(
        self,
        url: RtmpUrl,
        *,
        timeout: float = 10.0,
        stall_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        insecure: bool = False,
    ) -> None:
        """``rtmps://`` URLs use TLS: ``ssl_context`` if given, else ``tls_context(insecure)``."""
        self.url = url
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self._ssl = ssl_context
        self.insecure = insecure
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out = ChunkWriter()
        self._in = ChunkReader()
        self._read_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self.window = InFlightWindow(min_window=2 * ACK_WINDOW)
        # Until the server acks (some never do), TCP's own acks size the window:
        # a link's queue then stays in our send queue, not in the kernel's.
        self.tcp_window = InFlightWindow(min_window=2 * ACK_WINDOW)
        self._sock: Any = None  # the TCP socket (under TLS too), for SIOCOUTQ
        self.acked = asyncio.Event()  # set on every server ack: room to send again
        self._unflushed: list[bytes] = []
        self._unflushed_bytes = 0
        self._buffer_limit = WRITE_BUFFER_HIGH  # what the transport may hold (set at connect)
        self._pending: dict[float, tuple[str, asyncio.Future[msg.Command]]] = {}
        self._publish_status: asyncio.Future[dict[str, Any]] | None = None
        self._publish_transaction: float | None = None
        self._next_transaction = 0.0  # connect goes out as 1, as the spec and FFmpeg send it
        self._eof_sent = False
        self._phase = "idle"
        self._failure: StreamerError | None = None
        self.stream_id = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._ack_window = 0
        self._last_ack = 0
        self._acks = AckCounter(restart_gap=RESTART_GAP)

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        """Open TCP (or TLS), handshake, connect, create the stream and publish."""
        log.info("connecting", url=self.url.redacted)
        reader, writer = await self._open()
        self._reader, self._writer = reader, writer
        # Over TLS the plain transport below holds its own share (set in _open).
        tls = writer.get_extra_info("sslcontext") is not None
        self._buffer_limit = WRITE_BUFFER_HIGH // 2 if tls else WRITE_BUFFER_HIGH
        writer.transport.set_write_buffer_limits(high=self._buffer_limit)
        sock = writer.get_extra_info("socket")  # the TCP socket, under TLS too
        self._sock = sock
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Linux: unacknowledged data older than this kills the connection.
                timeout_ms = int(self.stall_timeout * 1000)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
        self._phase = "handshake"
        await client_handshake(reader, writer, self.timeout)
        self._read_task = asyncio.create_task(self._read_loop(), name="rtmp-reader")
        self._watchdog_task = asyncio.create_task(self._watchdog(), name="rtmp-watchdog")
        await self._send(msg.set_chunk_size(CHUNK_SIZE))
        self._out.set_chunk_size(CHUNK_SIZE)
        await self._send(msg.window_ack_size(ACK_WINDOW))

        self._phase = "connect"
        await self._call(
            "connect",
            {
                "app": self.url.app,
                "type": "nonprivate",
                "flashVer": FLASH_VERSION,
                "tcUrl": self.url.tc_url,
            },
        )
        key = self.url.key
        await self._send(msg.command("releaseStream", self._transaction(), None, key))
        await self._send(msg.command("FCPublish", self._transaction(), None, key))
        self._phase = "createStream"
        result = await self._call("createStream", None)
        stream_id = next((a for a in result.args if isinstance(a, float)), None)
        if stream_id is None:
            raise ProtocolError("server answered createStream without a stream id")
        self.stream_id = int(stream_id)

        self._phase = "publish"
        loop = asyncio.get_running_loop()
        self._publish_status = loop.create_future()
        # The answer is onStatus, or _error for this transaction from some servers.
        self._publish_transaction = self._transaction()
        await self._send(
            msg.command(
                "publish", self._publish_transaction, None, key, "live", stream_id=self.stream_id
            )
        )
        await self._wait(self._publish_status, "publish")
        await asyncio.wait({self._read_task}, timeout=PUBLISH_SETTLE)
        if self._failure is not None:
            raise self._failure
        self._phase = "live"
        log.info("published", url=self.url.redacted, stream_id=self.stream_id)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP, then TLS for rtmps://; both together within ``timeout``, failures ConnectFailed."""
        host, port = self.url.host, self.url.port
        context = self._ssl
        if self.url.tls and context is None:
            context = tls_context(self.insecure)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout
        self._phase = "tcp"
        try:
            async with asyncio.timeout_at(deadline):
                # Happy eyeballs: a blackholed IPv6 route must not eat the whole timeout.
                reader, writer = await asyncio.open_connection(
                    host, port, limit=1 << 20, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
                )
        except TimeoutError:
            raise ConnectFailed(
                f"could not connect to {host}:{port}: no answer within {self.timeout:g} s"
            ) from None
        except socket.gaierror:
            raise ConnectFailed(f"could not connect: unknown host {host!r}") from None
        except OSError as exc:
            reason = _connect_reason(exc)
            raise ConnectFailed(f"could not connect to {host}:{port}: {reason}") from None
        if context is None:
            return reader, writer
        self._phase = "tls"
        # TLS keeps a buffer of its own above this one: together about WRITE_BUFFER_HIGH.
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH // 2)
        probe_after = max(PLAIN_PROBE_AFTER, 3 * (loop.time() - started))
        try:
            async with asyncio.timeout_at(deadline):
                await self._start_tls(writer, context, probe_after)
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, ConnectFailed):
                raise
            if isinstance(exc, Exception):  # not a cancellation
                raise _tls_failure(exc, host, port, self.timeout) from None
            raise
        return reader, writer

    async def _start_tls(
        self, writer: asyncio.StreamWriter, context: ssl.SSLContext, probe_after: float
    ) -> None:
        """TLS handshake; a server still silent after ``probe_after`` s is asked in plain RTMP.

        nginx-rtmp and SRS read 1537 bytes before they answer anything, more than
        a ClientHello, so on their plain port a TLS handshake just waits. A second
        connection sending C0+C1 gets S0 at once from them: then we know, and say so.
        """
        host, port = self.url.host, self.url.port
        peer = writer.get_extra_info("peername")
        handshake = asyncio.ensure_future(writer.start_tls(context, server_hostname=host))
        probe: asyncio.Future[bool] | None = None
        try:
            await asyncio.wait({handshake}, timeout=probe_after)
            if not handshake.done() and peer:
                probe = asyncio.ensure_future(_speaks_plain_rtmp(peer[0], peer[1]))
                await asyncio.wait({handshake, probe}, return_when=asyncio.FIRST_COMPLETED)
                plain = probe.done() and probe.exception() is None and probe.result()
                if plain and not handshake.done():
                    raise ConnectFailed(
                        f"{host}:{port} did not answer TLS (it speaks plain RTMP); "
                        "use rtmp:// for this port, or the server's rtmps:// port (usually 443)"
                    )
            await handshake
        finally:
            for task in (handshake, probe):
                if task is not None and not task.done():
                    task.cancel()
                    task.add_done_callback(_consume)

    def abandon(self) -> None:
        """The connection is given up: close() will not try to unpublish on it."""
        if self._phase == "live":
            self._phase = "abandoned"

    async def close(self) -> None:
        """Unpublish if live (so the server ends the stream cleanly), then close."""
        if self._writer is None:
            return
        if self._phase == "live" and self._failure is None:
            key = self.url.key
            with contextlib.suppress(StreamerError, OSError):
                await self._send(msg.command("FCUnpublish", self._transaction(), None, key))
                await self._send(
                    msg.command("deleteStream", self._transaction(), None, float(self.stream_id))
                )
            log.info("unpublished", url=self.url.redacted)
            self._phase = "closing"
            await self._read_to_the_end()
        self._phase = "closed"
        writer, self._writer = self._writer, None
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        for task in (self._read_task, self._watchdog_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _read_to_the_end(self) -> None:
        """Say we are done sending, read what the server still sends until it hangs up.

        Closing with its last acks unread makes the kernel send a reset, which a
        server logs as an error instead of a clean end of stream. Over TLS the
        close_notify exchange in ``close`` does the same.
        """
        assert self._writer is not None
        transport = self._writer.transport
        if self._read_task is None or not transport.can_write_eof():
            return
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()
            self._eof_sent = True
            await asyncio.wait({self._read_task}, timeout=CLOSE_LINGER)

    # -- media ----------------------------------------------------------------

    async def send_metadata(self, metadata: dict[str, Any]) -> None:
        """onMetaData as an ECMA array, as FFmpeg and OBS send it."""
        await self._send(
            msg.data(
                "@setDataFrame", "onMetaData", amf0.EcmaArray(metadata), stream_id=self.stream_id
            )
        )

    async def send_audio(self, timestamp_ms: int, body: bytes) -> None:
        self.write_audio(timestamp_ms, body)
        await self.flush()

    async def send_video(self, timestamp_ms: int, body: bytes) -> None:
        self.write_video(timestamp_ms, body)
        await self.flush()

    def write_audio(self, timestamp_ms: int, body: bytes) -> None:
        """Queue an audio message without waiting; ``flush()`` waits for the socket."""
        self._write(Message(msg.CSID_AUDIO, timestamp_ms, msg.AUDIO, self.stream_id, body))

    def write_video(self, timestamp_ms: int, body: bytes) -> None:
        self._write(Message(msg.CSID_VIDEO, timestamp_ms, msg.VIDEO, self.stream_id, body))

    @property
    def server_acked(self) -> int | None:
        """Bytes the server has acknowledged so far (None until it first acks)."""
        return self.window.acked

    @property
    def bytes_delivered(self) -> int:
        """What the server acknowledged; from one that never acks, what its TCP acknowledged."""
        if self.window.acked is not None:
            return self.window.acked
        tcp = self.tcp_acked()
        return tcp if tcp is not None else self.bytes_sent - self._unflushed_bytes

    def tcp_acked(self) -> int | None:
        """Bytes the server's TCP acknowledged (Linux; approximate under TLS), else None.

        Received by its kernel, not yet read by the server: all a publisher can
        know of a server that sends no RTMP acknowledgements.
        """
        sock = self._sock
        if sock is None or SIOCOUTQ is None or self._writer is None:
            return None
        try:
            unacked: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
        except (OSError, ValueError):
            return None
        return max(0, self.bytes_sent - self._unflushed_bytes - self.write_buffer_size - unacked)

    def _window_room(self) -> bool:
        """Room in the in-flight window: the server's acks, or TCP's until it sends any."""
        if self.window.acked is not None:
            return self.window.room(self.bytes_sent)
        tcp = self.tcp_acked()
        if tcp is None:
            return True
        self.tcp_window.ack(tcp, asyncio.get_running_loop().time())
        return self.tcp_window.room(self.bytes_sent)

    def has_room(self) -> bool:
        """Whether more media may be written now without hiding a backlog in buffers.

        Two limits: the in-flight window (sized from the server's acks, or from
        its TCP's while it has sent none) and our own buffers, which fill once
        the kernel holds ``NOTSENT_LOWAT`` unsent bytes.
        """
        buffered = self.write_buffer_size + self._unflushed_bytes
        return buffered <= self._buffer_limit and self._window_room()

    async def wait_for_room(self, timeout: float) -> None:
        """Wait up to ``timeout`` for ``has_room``: an ack, or our buffers draining."""
        self.acked.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self.write_buffer_size + self._unflushed_bytes > self._buffer_limit:
                    await self.flush()  # drains the transport to its low-water mark
                if not self._window_room():
                    if self.window.acked is None:  # TCP's acks come without an event
                        await asyncio.sleep(KERNEL_POLL)
                    else:
                        await self.acked.wait()
        self._raise_if_failed()

    @property
    def write_buffer_size(self) -> int:
        """Bytes handed to the transport but not yet to the kernel."""
        return self._writer.transport.get_write_buffer_size() if self._writer else 0

    # -- internals ----------------------------------------------------------

    def _transaction(self) -> float:
        self._next_transaction += 1
        return self._next_transaction

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._writer is None:
            raise ConnectionLost("connection is closed")

    async def _send(self, message: Message) -> None:
        """Write one message and wait until the socket has taken most of it."""
        self._write(message)
        await self.flush()

    def _write(self, message: Message) -> None:
        """Encode now (chunk headers depend on order), hand to the socket at ``flush``."""
        self._raise_if_failed()
        data = self._out.encode(message)
        self._unflushed.append(data)
        self._unflushed_bytes += len(data)
        self.bytes_sent += len(data)

    async def flush(self) -> None:
        """Write what is pending in one go; wait until the socket has taken most of it."""
        self._raise_if_failed()
        assert self._writer is not None
        if self._unflushed:
            self._writer.write(b"".join(self._unflushed))
            self._unflushed.clear()
            self._unflushed_bytes = 0
            now = asyncio.get_running_loop().time()
            self.window.sent(self.bytes_sent, now)
            self.tcp_window.sent(self.bytes_sent, now)
        try:
            await self._writer.drain()  # the watchdog aborts the transport if this stalls
        except (ConnectionError, OSError) as exc:
            # During connect/publish a server that refuses often just hangs up;
            # whether we notice on reading or on writing, it means the same.
            self._fail(self._closed_by_server(f"connection lost while sending: {exc}"))
        self._raise_if_failed()

    async def _watchdog(self) -> None:
        """Declare the link dead when nothing moves for ``stall_timeout`` seconds.

        Two views: the kernel accepting our bytes (a full socket buffer), and
        the server acknowledging them (a black hole further along keeps the
        kernel happy but never acks). Acks are only watched once the server
        has shown that it sends them.
        """
        loop = asyncio.get_running_loop()
        socket_view = StallDetector(self.stall_timeout)
        server_view = StallDetector(self.stall_timeout)
        while self._failure is None and self._writer is not None:
            now = loop.time()
            buffered = self.write_buffer_size
            stalled = socket_view.update(self.bytes_sent - buffered, buffered, now)
            if self.server_acked is not None:
                owed = self.bytes_sent - self.server_acked - ACK_WINDOW
                stalled = server_view.update(self.server_acked, max(0, owed), now) or stalled
            if stalled:
                self._fail(
                    ConnectionLost(
                        f"link stalled: nothing got through for {self.stall_timeout:g} s"
                    )
                )
                self._writer.transport.abort()
                return
            await asyncio.sleep(WATCHDOG_PERIOD)

    async def _call(self, name: str, *args: Any) -> msg.Command:
        transaction = self._transaction()
        future: asyncio.Future[msg.Command] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = (name, future)
        try:
            await self._send(msg.command(name, transaction, *args))
            return await self._wait(future, name)
        finally:
            self._pending.pop(transaction, None)

    async def _wait(self, future: asyncio.Future[_T], what: str) -> _T:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise ConnectFailed(f"server did not answer {what} within {self.timeout:g} s") from None

    def _fail(self, error: StreamerError) -> None:
        """Record the first failure and wake everybody waiting on the server."""
        if self._failure is None:
            self._failure = error
            if self._phase == "live":
                log.warning("connection lost", reason=error.message)
        for future in [*(f for _, f in self._pending.values()), self._publish_status]:
            if future is not None and not future.done():
                future.set_exception(self._failure)
                future.exception()  # mark retrieved: the waiter may already be gone

    def _closed_by_server(self, otherwise: str = "server closed the connection") -> StreamerError:
        """A hang-up: during connect/publish it is the server's answer, later a lost link."""
        if self._phase == "connect":
            return PublishRejected(
                "NetConnection.Connect.Rejected",
                f"server closed the connection in answer to connect; "
                f"is the application {self.url.app!r} right?",
            )
        if self._phase == "publish":
            return PublishRejected(
                "NetStream.Publish.Rejected",
                "server closed the connection in answer to publish; is the stream key right?",
            )
        return ConnectionLost(otherwise)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    self._fail(self._closed_by_server())
                    return
                try:
                    messages = self._in.feed(data)
                except ValueError as exc:
                    self._fail(ProtocolError(f"server sent invalid RTMP: {exc}"))
                    return
                for message in messages:
                    self._dispatch(message)
                self._count_received(len(data))  # after dispatch: a new window counts these
        except (ConnectionError, OSError) as exc:
            self._fail(self._closed_by_server(f"connection lost: {exc}"))
        except StreamerError as exc:
            self._fail(exc)

    def _count_received(self, n: int) -> None:
        self.bytes_received += n
        if self._ack_window and self.bytes_received - self._last_ack >= self._ack_window:
            self._last_ack = self.bytes_received
            self._write_now(msg.acknowledgement(self.bytes_received))

    def _write_now(self, message: Message) -> None:
        """Small control replies from the reader: written without waiting."""
        if self._writer is not None and not self._writer.is_closing() and not self._eof_sent:
            data = self._out.encode(message)
            self._writer.write(data)
            self.bytes_sent += len(data)

    def _dispatch(self, message: Message) -> None:
        try:
            if message.type_id == msg.ACKNOWLEDGEMENT:
                # Only what reached the socket can have arrived.
                sent = self.bytes_sent - self._unflushed_bytes
                total = self._acks.update(msg.u32(message.payload), sent)
                if total is not None:
                    self.window.ack(total, asyncio.get_running_loop().time())
                self.acked.set()
            elif message.type_id == msg.WINDOW_ACK_SIZE:
                self._ack_window = msg.u32(message.payload)
            elif message.type_id == msg.USER_CONTROL:
                payload = message.payload
                if len(payload) >= 6 and int.from_bytes(payload[:2], "big") == msg.PING_REQUEST:
                    self._write_now(msg.ping_response(payload[2:6]))
            elif message.type_id == msg.COMMAND_AMF0:
                try:
                    command = msg.parse_command(message.payload)
                except ValueError as exc:
                    self._unreadable_command(message.payload, exc)
                else:
                    self._on_command(command)
        except ValueError as exc:
            raise ProtocolError(f"server sent an invalid message: {exc}") from None
        # Set Chunk Size and Abort are applied by the chunk reader; Set Peer
        # Bandwidth and Acknowledgement need nothing from a publisher.

    def _waiting_for(self, name: str, transaction: float) -> tuple[str, asyncio.Future[Any]] | None:
        """What is waiting for this command: (what we asked, its future), if anything."""
        if name in ("_result", "_error"):
            pending = self._pending.get(transaction)
            if pending is not None and not pending[1].done():
                return pending
        publish = self._publish_status
        if publish is None or publish.done():
            return None
        if name == "onStatus" or (name == "_error" and transaction == self._publish_transaction):
            return "publish", publish
        return None

    def _unreadable_command(self, payload: bytes, exc: ValueError) -> None:
        """A command we cannot read fails only what waits for it; others are skipped."""
        name, transaction = msg.peek_command(payload)
        waiting = self._waiting_for(name, transaction) if name else None
        if waiting is None:
            log.debug("skipped a command we cannot read", command=name, reason=str(exc))
            return
        what, future = waiting
        future.set_exception(
            ProtocolError(f"server's answer to {what} ({name}) could not be read: {exc}")
        )

    def _on_command(self, command: msg.Command) -> None:
        info = command.info()
        code = str(info.get("code", ""))
        description = str(info.get("description", ""))
        waiting = self._waiting_for(command.name, command.transaction)
        if command.name in ("_result", "_error") and waiting is not None:
            what, future = waiting
            if command.name == "_error":
                future.set_exception(PublishRejected(code or "_error", description))
                future.exception()  # mark retrieved: the waiter may already be gone
            elif what != "publish":
                future.set_result(command)
        elif command.name == "onStatus":
            if not info and any(isinstance(a, amf0.Amf3) for a in command.args) and waiting:
                waiting[1].set_exception(
                    ProtocolError("server answered publish in AMF3, which this client cannot read")
                )
                return
            self._on_status(code, str(info.get("level", "")), description, info)

    def _on_status(self, code: str, level: str, description: str, info: dict[str, Any]) -> None:
        log.debug("server status", code=code, level=level, description=description)
        waiting = self._publish_status
        if waiting is not None and not waiting.done():
            if code == "NetStream.Publish.Start":
                waiting.set_result(info)
            elif level == "error" or code.endswith(("BadName", "Rejected", "Failed")):
                waiting.set_exception(PublishRejected(code, description))
                waiting.exception()
        elif level == "error":
            self._fail(ConnectionLost(f"server ended the stream: {code} {description}".strip()))
