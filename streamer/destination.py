"""One destination: its own send queue, publisher, sessions, reconnects and numbers.

Every destination gets the same encoded packets through its outbox (see
``pipeline.Fanout``) and sends them as fast as its own link takes them; one
that is slow drops from its own queue, one that is down reconnects on its
own schedule, and neither ever slows the others or the capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import structlog

from streamer.exc import (
    ConnectFailed,
    ConnectionLost,
    DeliveryFailed,
    ProtocolError,
    PublishRejected,
    StreamerError,
)
from streamer.media import AudioConfig, Kind, VideoConfig
from streamer.net.backoff import Backoff
from streamer.net.bitrate import BitrateController
from streamer.net.delivery import Delivery, shortfall
from streamer.net.sendqueue import QueueCounters, SendQueue
from streamer.pipeline import Outbox
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.session import Session
from streamer.settings import Settings, Target
from streamer.state import ERROR, IDLE, LIVE, PREPARING, RECONNECTING

log = structlog.get_logger("streamer")

IDLE_WAIT = 5.0  # seconds to wait for packets before looking around again
DRAIN_ON_STOP = 2.0  # seconds allowed to send what is queued when stopping
SEND_BATCH = 16  # packets written per socket flush: few loop turns, no hidden backlog
ROOM_WAIT = 0.5  # seconds to wait for a server ack before looking around again
NETWORK_ERRORS = (ConnectFailed, ConnectionLost, ProtocolError)


class Publisher(Protocol):
    """What a destination needs of a publisher (``RtmpPublisher``); tests pass fakes."""

    bytes_sent: int

    async def connect(self) -> None: ...
    async def send_metadata(self, metadata: dict[str, Any]) -> None: ...
    async def send_video(self, timestamp_ms: int, body: bytes) -> None: ...
    async def send_audio(self, timestamp_ms: int, body: bytes) -> None: ...
    def write_video(self, timestamp_ms: int, body: bytes) -> None: ...
    def write_audio(self, timestamp_ms: int, body: bytes) -> None: ...
    def has_room(self) -> bool: ...
    async def wait_for_room(self, timeout: float) -> None: ...
    async def flush(self) -> None: ...
    def abandon(self) -> None: ...
    async def close(self) -> None: ...
    @property
    def server_acked(self) -> int | None: ...
    @property
    def bytes_delivered(self) -> int: ...
    @property
    def write_buffer_size(self) -> int: ...


PublisherFactory = Callable[[Target, Settings], Publisher]


def rtmp_publisher(target: Target, s: Settings) -> Publisher:
    return RtmpPublisher(
        target.url,
        timeout=s.connect_timeout,
        stall_timeout=s.stall_timeout,
        insecure=s.insecure,
    )


class DestinationNumbers(TypedDict):
    """One destination in ``Device.snapshot()`` (and a line of the stats log)."""

    name: str
    url: str  # the key redacted
    state: str
    reason: str
    sent_kbps: int  # as of the last stats interval; 0 unless live
    fps: float
    queue_ms: int  # media time waiting in its send queue
    frames_sent: int  # the counters from here on last for the life of the device
    dropped: int
    dropped_video: int
    dropped_audio: int
    discarded_offline: int
    keyframes_requested: int
    target_kbps: int | None  # its bitrate controller's proposal (None: not adaptive)
    reconnects: int


@dataclass(frozen=True, slots=True)
class Media:
    """What every session describes first, and the encoder's keyframe button."""

    video: VideoConfig
    audio: AudioConfig | None
    request_keyframe: Callable[[], None]


class Destination:
    """Streams to one target until stopped; reconnects by its own policy.

    ``state`` is one of the device's five states, for this destination alone;
    ``on_change`` is called on the event loop after every change.
    ``counters``, ``reconnects`` and ``frames_sent`` last for the life of the
    object (one per destination for the life of the device).
    """

    def __init__(
        self,
        target: Target,
        settings: Settings,
        *,
        publisher_factory: PublisherFactory = rtmp_publisher,
        clock: Callable[[], float] = time.monotonic,
        first_session_ms: int = 0,
        on_change: Callable[[Destination], None] = lambda d: None,
    ) -> None:
        self.target = target
        self.s = settings
        self._factory = publisher_factory
        self._clock = clock
        self._first_session_ms = first_session_ms
        self._on_change = on_change
        self.state = IDLE
        self.reason = ""
        self.counters = QueueCounters()
        self.backoff = Backoff(
            initial=settings.reconnect_delay,
            cap=max(settings.reconnect_max_delay, settings.reconnect_delay),
            max_attempts=None if settings.service else settings.max_reconnects,
        )
        self.bitrate = (
            BitrateController(
                max_kbps=settings.video_bitrate_kbps,
                min_kbps=min(settings.min_video_bitrate_kbps, settings.video_bitrate_kbps),
                audio_kbps=settings.audio_bitrate_kbps if settings.microphone != "none" else 0,
            )
            if settings.adaptive_bitrate
            else None
        )
        self.delivery = Delivery()  # which written video frames the server acknowledged
        self.reconnects = 0
        self.frames_sent = 0
        self.sent_kbps = 0
        self.fps = 0.0
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self._session: Session | None = None
        self._been_live = False
        self._running = False
        self._drain_until: float | None = None
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()  # set by stop: ends a connection attempt
        self._stats_at = 0.0
        self._stats_bytes = 0
        self._stats_frames = 0

    @property
    def name(self) -> str:
        return self.target.name

    # -- what it is doing ---------------------------------------------------------

    def numbers(self) -> DestinationNumbers:
        """This destination's numbers: rates as of the last stats interval, counters for life."""
        c = self.counters
        live = self.state == LIVE
        return {
            "name": self.name,
            "url": self.target.url.redacted,
            "state": self.state,
            "reason": self.reason,
            "sent_kbps": self.sent_kbps if live else 0,
            "fps": self.fps if live else 0.0,
            "queue_ms": self.outbox.depth_ms if self.outbox else 0,
            "frames_sent": self.frames_sent,
            "dropped": c.dropped_total,
            "dropped_video": c.dropped(Kind.VIDEO),
            "dropped_audio": c.dropped(Kind.AUDIO),
            "discarded_offline": c.discarded_offline,
            "keyframes_requested": c.keyframes_requested,
            "target_kbps": self.bitrate.target_kbps if self.bitrate else None,
            "reconnects": self.reconnects,
        }

    def judge_delivery(self) -> None:
        """A timed run succeeds only if this server got most of the video captured live."""
        delivered = self.delivery.delivered
        live = self.delivery.captured_live(self.counters.dropped(Kind.VIDEO))
        log.info("delivered", destination=self.name, video_frames=delivered, captured_live=live)
        problem = shortfall(delivered, live)
        if problem is not None:
            raise DeliveryFailed(f"{self.name}: {problem}" if self.s.destinations[1:] else problem)

    def _set(self, state: str, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self._on_change(self)

    # -- running ------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> Outbox:
        """A new outbox for a new pipeline run (the counters carry on); ``run`` may follow.

        A ``stop`` from here on ends that run, even one that comes before
        its task first ran.
        """
        queue = SendQueue(drop_threshold_ms=self.s.drop_threshold_ms, counters=self.counters)
        queue.offline = True
        self.outbox = Outbox(queue, loop)
        self._running = True
        self._drain_until = None
        self._stopped.clear()
        return self.outbox

    async def run(self, media: Media) -> None:
        """Connect, publish and send until ``stop``; reconnect when the policy allows.

        Raises the error that ends this destination in CLI mode (a refusal, a
        first connection that fails, reconnects given up); service mode waits
        out ``error_cooldown`` and tries again instead.
        """
        if not self._running:
            return  # stopped before it began
        self._set(PREPARING, f"connecting to {self.target.url.redacted}")
        try:
            while self._running:
                try:
                    await self._stream_once(media)
                except StreamerError as exc:
                    await self._close(graceful=False)
                    if self.outbox is not None:
                        self.outbox.go_offline("connection_lost")
                    if self._running:
                        await self._after_failure(exc)
        finally:
            await self._close(graceful=False)  # only if something is left open
            if self.outbox is not None:
                self.outbox.go_offline("offline")
            self._set(IDLE, "stopped")

    async def _after_failure(self, exc: StreamerError) -> None:
        now = self._clock()
        if not self._retryable(exc):
            if not self.s.service:
                raise exc
            self._set(ERROR, exc.message)
            log.error("destination failed", destination=self.name, reason=exc.message)
            log.info(
                "retrying after cooldown", destination=self.name, seconds=self.s.error_cooldown
            )
            await self._sleep(self.s.error_cooldown)
            if self._running and self.state == ERROR:  # not ended early by retry_now or stop
                self._set(PREPARING, f"{self.s.error_cooldown:g} s cooldown over")
            return
        if self.state == LIVE:
            self.backoff.lost(now)
        delay = self.backoff.next_delay(now)
        if delay is None:
            raise ConnectionLost(
                f"gave up after {self.backoff.attempts} reconnect attempts: {exc.message}"
            )
        self._set(RECONNECTING, f"{exc.message}; retrying in {delay:.1f} s")
        log.warning("connection lost", destination=self.name, reason=self.reason)
        await self._sleep(delay)

    def _retryable(self, exc: StreamerError) -> bool:
        if isinstance(exc, PublishRejected):
            # nginx keeps a publisher that vanished until it times out; its
            # "name in use" after we have been live here is our own ghost.
            return self._been_live and exc.code.endswith("BadName")
        if isinstance(exc, NETWORK_ERRORS):
            # In CLI mode a first connection that fails is reported at once: a
            # typo in the host should not take minutes of retries to show.
            return self.s.service or self._been_live
        return False

    async def _sleep(self, seconds: float) -> bool:
        """Wait, waking early on ``stop``; True when the full time passed."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _stream_once(self, media: Media) -> None:
        """Connect, publish, send until stopped or the session's clock runs out."""
        assert self.outbox is not None
        publisher = self._factory(self.target, self.s)
        self.publisher = publisher
        self._stats_bytes = 0  # a new connection counts its bytes from 0
        if not await self._connect(publisher):
            return  # stopped while connecting
        start_ms, self._first_session_ms = self._first_session_ms, 0
        session = Session(publisher, start_ms)
        await session.open(media.video, media.audio)
        self._session = session
        self.outbox.go_online("new_session")
        if self.state == RECONNECTING:
            self.reconnects += 1
        self._been_live = True
        self._set(LIVE, f"publishing to {self.target.url.redacted}")
        now = self._clock()
        self.backoff.live_since(now)
        if self.bitrate is not None:
            self.bitrate.reset(now)
        self._stats_bytes = 0  # a new publisher counts from 0
        await self._pump(publisher, session, media)
        if session.ended:
            log.info(
                "session timestamps near 2^31 ms: publishing anew from 0",
                destination=self.name,
                last_ms=session.last_video_ms,
            )
        await self._close(graceful=True)

    async def _pump(self, publisher: Publisher, session: Session, media: Media) -> None:
        outbox = self.outbox
        assert outbox is not None
        while not session.ended:
            if not self._running and (
                self._drain_until is None or self._clock() >= self._drain_until
            ):
                return
            self.delivery.received(publisher.bytes_delivered)
            if outbox.take_keyframe_request():
                media.request_keyframe()
            if not publisher.has_room():
                # The link has all it can take: what waits stays in the send
                # queue, where it is measured and dropped with care.
                await publisher.wait_for_room(ROOM_WAIT)
                continue
            written = self._write_batch(publisher, session, outbox)
            if not written:
                if not self._running:
                    return  # drained
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_WAIT):
                        await outbox.ready.wait()
                continue
            await publisher.flush()

    async def _connect(self, publisher: Publisher) -> bool:
        """Connect and publish; False when ``stop`` came first (the attempt is abandoned).

        Nothing is published yet, so there is nothing to drain: a stop does
        not wait for a server that takes its time (up to ``connect_timeout``).
        """
        connecting = asyncio.ensure_future(publisher.connect())
        stopping = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
        if connecting.cancelled():
            return False
        connecting.result()  # raises what the attempt raised
        return True

    def _write_batch(self, publisher: Publisher, session: Session, outbox: Outbox) -> int:
        written = 0
        while written < SEND_BATCH and publisher.has_room() and not session.ended:
            packet = outbox.pop()
            if packet is None:
                break
            if session.write(packet) and packet.kind is Kind.VIDEO:
                self.frames_sent += 1
                self.delivery.written(publisher.bytes_sent)
            written += 1
        return written

    def begin_rates(self, now: float) -> None:
        """A stream starts: its first stats interval counts from ``now``, not from an earlier
        stream or the clock's zero (which made a first interval's rates near 0). Its bytes
        count from each connection's start (``_stream_once``)."""
        self._stats_at, self._stats_frames = now, self.frames_sent

    def sample_rates(self, now: float) -> None:
        """kbit/s and frames/s since the last sample (the stats interval)."""
        publisher = self.publisher
        sent = publisher.bytes_sent if publisher is not None else self._stats_bytes
        elapsed = now - self._stats_at
        if elapsed > 0:
            self.sent_kbps = round(max(0, sent - self._stats_bytes) * 8 / elapsed / 1000)
            self.fps = round((self.frames_sent - self._stats_frames) / elapsed, 1)
        self._stats_at, self._stats_bytes, self._stats_frames = now, sent, self.frames_sent

    def propose_bitrate(self, now: float) -> int | None:
        """What this destination's link can carry, from what its server took."""
        publisher, controller, outbox = self.publisher, self.bitrate, self.outbox
        if controller is None or publisher is None or outbox is None or self.state != LIVE:
            return None
        # The server's acks; from a server that never acks, its TCP's.
        controller.update(now, publisher.bytes_delivered, outbox.depth_ms)
        return controller.target_kbps

    def retry_now(self, reason: str) -> None:
        """In error (waiting out the cooldown): try again now (a person asked)."""
        if self.state == ERROR and self._running:
            self._set(PREPARING, reason)
            self._wake.set()

    def stop(self, drain: bool = False) -> None:
        """Stop sending; with ``drain``, first send what is queued (for DRAIN_ON_STOP at most).

        ``run`` then unpublishes and returns. Call it after the pipeline stopped,
        so that what its encoders flushed is in the queue.
        """
        self._running = False
        self._drain_until = self._clock() + DRAIN_ON_STOP if drain else None
        self._wake.set()
        self._stopped.set()
        if self.outbox is not None:
            self.outbox.ready.set()

    async def _close(self, graceful: bool) -> None:
        publisher, self.publisher = self.publisher, None
        self._session = None
        if publisher is None:
            return
        self.delivery.received(publisher.bytes_delivered)
        if not graceful:
            publisher.abandon()
        await publisher.close()
        if publisher.server_acked is not None:  # its last acks, read while closing
            self.delivery.received(publisher.server_acked)
        self.delivery.session_ended()
