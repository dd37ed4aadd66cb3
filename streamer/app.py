"""Streamer: the lifecycle that the state machine drives, and the sending side.

The capture side (``pipeline.py``) fills the send queue from its own
threads; this module owns the event loop's half: connecting, publishing,
taking packets from the queue as fast as the link takes them, adapting the
bitrate, reconnecting. Hardware and encoders stay up across reconnects; each
connection is a new session that starts at a fresh keyframe with timestamps
from 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from streamer import log as logsetup
from streamer.encode import flv
from streamer.encode.select import ready_config
from streamer.exc import (
    ConnectFailed,
    ConnectionLost,
    DeliveryFailed,
    ProtocolError,
    PublishRejected,
    StreamerError,
)
from streamer.media import Kind, Packet
from streamer.net.backoff import Backoff
from streamer.net.bitrate import BitrateController
from streamer.net.delivery import Delivery, shortfall
from streamer.net.sendqueue import DEFAULT_DROP_THRESHOLD_MS, QueueCounters
from streamer.pipeline import Pipeline
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.url import RtmpUrl
from streamer.state import ERROR, IDLE, LIVE, RECONNECTING, DeviceState

log = structlog.get_logger("streamer")

STATS_INTERVAL = 5.0
DRAIN_ON_STOP = 2.0  # seconds allowed to send what is queued when stopping
SEND_BATCH = 16  # packets written per socket flush: few loop turns, no hidden backlog
ROOM_WAIT = 0.5  # seconds to wait for a server ack before looking around again
NETWORK_ERRORS = (ConnectFailed, ConnectionLost, ProtocolError)
# RTMP timestamps are 32-bit milliseconds, and many readers take FLV time as
# signed: past 2^31 ms (24.8 days) of one session they break. A session that
# gets within a minute of it ends cleanly at its next keyframe and the next
# one starts at 0 at once (a gap of a fraction of a second every 24 days).
SESSION_LIMIT_MS = 2**31 - 60_000


@dataclass(frozen=True, slots=True)
class Settings:
    url: RtmpUrl
    camera: str = "sim"
    microphone: str = "sim"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    video_bitrate_kbps: int = 2500
    audio_bitrate_kbps: int = 128
    duration: float | None = None
    service: bool = False
    max_reconnects: int = 10
    reconnect_delay: float = 1.0  # seconds before the first reconnect attempt, doubling
    reconnect_max_delay: float = 30.0  # ... up to this
    connect_timeout: float = 10.0
    stall_timeout: float = 10.0
    error_cooldown: float = 60.0  # service mode: seconds in error before trying again
    drop_threshold_ms: int = DEFAULT_DROP_THRESHOLD_MS
    min_video_bitrate_kbps: int = 300
    adaptive_bitrate: bool = True
    encoder: str = "auto"
    filters: tuple[str, ...] = ()
    insecure: bool = False  # rtmps:// without certificate verification, only when asked
    record_dir: str | None = None  # local recording while live (segments of record_minutes)
    record_minutes: float = 5.0
    record_keep_gb: float | None = None


class Streamer:
    """Runs the device: the state machine decides, this class carries it out."""

    def __init__(
        self,
        settings: Settings,
        state: DeviceState | None = None,
        *,
        first_session_ms: int = 0,
    ) -> None:
        """``first_session_ms``: the first session's first timestamp (tests of the
        timestamp boundaries start near them instead of waiting days)."""
        self.s = settings
        self.state = state or DeviceState()
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
        self.pipeline: Pipeline | None = None
        self.publisher: RtmpPublisher | None = None
        # Counters for the life of the process: a stop/start makes a new
        # pipeline and send queue but never sets them back (Prometheus counters).
        self.counters = QueueCounters()
        self.reconnects = 0
        self.video_packets_sent = 0
        self.delivery = Delivery()  # which written video frames the server acknowledged
        self._duration_reached = False
        self.started = time.monotonic()
        self.sent_kbps = 0
        self.fps = 0.0
        self.error: StreamerError | None = None
        self._want_running = True
        self._been_live = False
        self._deadline: float | None = None
        self._wake = asyncio.Event()
        self._origin: int | None = None
        self._first_session_ms = first_session_ms
        self._session_start_ms = 0  # the current session's first timestamp
        self._session_ended = False  # the session reached SESSION_LIMIT_MS: publish anew
        self._last_ts = {Kind.VIDEO: -1, Kind.AUDIO: -1}
        logsetup.set_state_provider(lambda: self.state.state)

    # -- what it is doing: stats line, /status, /metrics ----------------------

    def numbers(self) -> dict[str, Any]:
        """The live numbers: rates as of the last stats interval, counters since the process began.

        ``dropped*`` is what the link could not carry while live; what was
        captured with no session to send it to (connecting, reconnecting,
        before a session's first keyframe) is ``discarded_offline``.
        """
        pipeline = self.pipeline
        counters = self.counters
        chain = pipeline.filters if pipeline else None
        return {
            "sent_kbps": self.sent_kbps,
            "fps": self.fps,
            "queue_ms": pipeline.queue.depth_ms if pipeline else 0,
            "dropped": counters.dropped_total,
            "dropped_video": counters.dropped(Kind.VIDEO),
            "dropped_audio": counters.dropped(Kind.AUDIO),
            "discarded_offline": counters.discarded_offline,
            "keyframes_requested": counters.keyframes_requested,
            "target_kbps": self.bitrate.target_kbps if self.bitrate else self.s.video_bitrate_kbps,
            "reconnects": self.reconnects,
            "encoder": pipeline.video.name if pipeline else "",
            "filters": ",".join(chain.names) if chain else "",
            "recording": _recording_status(pipeline),
            "filter_ms": round(chain.cost_ms, 2) if chain else 0.0,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything /status shows (the URL with its key redacted)."""
        live = self.state.state == LIVE
        return {
            "state": self.state.state,
            "reason": self.state.reason,
            "since": datetime.fromtimestamp(self.state.since_wall).astimezone().isoformat(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "resolution": f"{self.s.width}x{self.s.height}",
            "frames_sent": self.video_packets_sent,
            "url": self.s.url.redacted,
            **self.numbers(),
            **({} if live else {"sent_kbps": 0, "fps": 0.0}),
        }

    def healthy(self) -> bool:
        """For the systemd watchdog: the loop runs (it asks) and no capture thread died."""
        try:
            if self.pipeline is not None:
                self.pipeline.check()
        except StreamerError:
            return False
        return True

    # -- commands (button, status page): called on the event loop ------------

    def toggle(self, reason: str) -> None:
        """Start when idle, stop otherwise (the button's short press)."""
        if self.state.state == IDLE:
            self.start(reason)
        else:
            self.stop(reason)

    def start(self, by: str) -> None:
        """Stream (again): from idle, or from an error a person chose to retry now."""
        if self.state.state == ERROR:
            self.state.fire("reset", f"start requested by {by}")
        self._want_running = True
        log.info("start requested", by=by)
        self._poke()

    def stop(self, by: str) -> None:
        self._want_running = False
        log.info("stop requested", by=by)
        self._poke()

    def reset(self, reason: str) -> None:
        if self.state.state == ERROR:
            self._want_running = False
            self.state.fire("reset", reason)
            self._poke()

    def _poke(self) -> None:
        self._wake.set()
        if self.pipeline is not None:
            self.pipeline.handoff.ready.set()

    # -- the lifecycle ----------------------------------------------------------

    async def run(self, shutdown: asyncio.Event) -> None:
        """Drive the device until ``shutdown`` (or, in CLI mode, the end of the stream).

        Raises the StreamerError that ended a CLI run; service mode never
        gives up on its own.
        """
        logsetup.add_secret(self.s.url.key)
        watcher = asyncio.create_task(self._relay(shutdown))
        try:
            await self._loop(shutdown)
        finally:
            watcher.cancel()
            await self._teardown(graceful=True)
            if self.state.state != IDLE:
                self.state.fire("stop", "shutting down")
        if self._duration_reached:
            self._judge_delivery()

    def _judge_delivery(self) -> None:
        """A --duration run succeeds only if the server got most of the video captured live."""
        delivered = self.delivery.delivered
        live = self.delivery.captured_live(self.counters.dropped(Kind.VIDEO))
        log.info("delivered", video_frames=delivered, captured_live=live)
        problem = shortfall(delivered, live)
        if problem is not None:
            raise DeliveryFailed(problem)

    async def _relay(self, shutdown: asyncio.Event) -> None:
        await shutdown.wait()
        self._poke()

    async def _loop(self, shutdown: asyncio.Event) -> None:
        while not shutdown.is_set():
            state = self.state.state
            if not self._want_running:
                if state != IDLE:
                    await self._teardown(graceful=True)
                    self.state.fire("stop", "stop requested")
                await self._sleep(None)
                continue
            if state == IDLE:
                self.state.fire("start", "service start" if self.s.service else "command line")
            elif state == ERROR:
                assert self.error is not None
                if not self.s.service:
                    raise self.error
                await self._teardown(graceful=False)
                log.info("retrying after cooldown", seconds=self.s.error_cooldown)
                if await self._sleep(self.s.error_cooldown) and self.state.state == ERROR:
                    self.state.fire("retry", f"{self.s.error_cooldown:g} s cooldown over")
            else:
                try:
                    if await self._stream_once(shutdown):
                        return  # --duration reached
                except StreamerError as exc:
                    await self._handle_failure(exc)

    async def _sleep(self, seconds: float | None) -> bool:
        """Wait, waking early on commands; True when the full time passed."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            return True
        return False

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

    async def _handle_failure(self, exc: StreamerError) -> None:
        await self._close_publisher(graceful=False)
        if self.pipeline is not None:
            self.pipeline.handoff.go_offline("connection_lost")
        if not self._retryable(exc):
            self.error = exc
            await self._teardown(graceful=False)
            self.state.fire("fail", exc.message)
            return
        if self.state.state == LIVE:
            self.backoff.lost(time.monotonic())
        delay = self.backoff.next_delay(time.monotonic())
        if delay is None:
            self.error = ConnectionLost(
                f"gave up after {self.backoff.attempts} reconnect attempts: {exc.message}"
            )
            await self._teardown(graceful=False)
            self.state.fire("fail", self.error.message)
            return
        self.state.fire("connection_lost", f"{exc.message}; retrying in {delay:.1f} s")
        await self._sleep(delay)

    async def _stream_once(self, shutdown: asyncio.Event) -> bool:
        """Prepare if needed, connect, publish, stream. True when the duration is over."""
        loop = asyncio.get_running_loop()
        if self.pipeline is None:
            pipeline = Pipeline(self.s, loop, self.counters)
            self.pipeline = pipeline
            pipeline.start()
        pipeline = self.pipeline
        # A hardware encoder only learns SPS/PPS with its first keyframe.
        video_config = await asyncio.to_thread(ready_config, pipeline.video, 5.0)
        if self.s.record_dir and pipeline.recorder is None:
            pipeline.start_recording(video_config, self.s)
        publisher = RtmpPublisher(
            self.s.url,
            timeout=self.s.connect_timeout,
            stall_timeout=self.s.stall_timeout,
            insecure=self.s.insecure,
        )
        self.publisher = publisher
        await publisher.connect()
        audio = pipeline.audio
        await publisher.send_metadata(
            flv.metadata(video_config, audio.config if audio else None, "streamer")
        )
        await publisher.send_video(0, flv.avc_sequence_header(video_config))
        if audio:
            await publisher.send_audio(0, flv.aac_sequence_header(audio.config))
        self._begin_session()
        pipeline.handoff.go_online("new_session")
        if self.state.state == RECONNECTING:  # not a stop/start by a person
            self.reconnects += 1
        self._been_live = True
        if self.state.state != LIVE:  # LIVE already: a session that reached its time limit
            self.state.fire("published", f"publishing to {self.s.url.redacted}")
        self.backoff.live_since(time.monotonic())
        if self.bitrate is not None:
            self.bitrate.reset(time.monotonic())
        if self._deadline is None and self.s.duration:
            self._deadline = time.monotonic() + self.s.duration
        return await self._pump(publisher, pipeline, shutdown)

    async def _pump(
        self, publisher: RtmpPublisher, pipeline: Pipeline, shutdown: asyncio.Event
    ) -> bool:
        stats = Stats(self, publisher, time.monotonic())
        handoff = pipeline.handoff
        while not shutdown.is_set() and self._want_running:
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                self._duration_reached = True
                return True
            self.delivery.received(publisher.bytes_delivered)
            pipeline.check()
            stats.maybe_log(now)
            self._adapt(publisher, pipeline, now)
            if handoff.take_keyframe_request():
                pipeline.video.request_keyframe()
            if not publisher.has_room():
                # The link has all it can take: what waits stays in the send
                # queue, where it is measured and dropped with care.
                await publisher.wait_for_room(ROOM_WAIT)
                continue
            written = 0
            while written < SEND_BATCH and publisher.has_room():
                packet = handoff.pop()
                if packet is None:
                    break
                self._write(publisher, packet)
                written += 1
            if self._session_ended:
                log.info(
                    "session timestamps near 2^31 ms: publishing anew from 0",
                    last_ms=self._last_ts[Kind.VIDEO],
                )
                await publisher.flush()
                await self._close_publisher(graceful=True)
                return False
            if not written:
                wait = STATS_INTERVAL
                if self._deadline is not None:
                    wait = min(wait, self._deadline - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await handoff.ready.wait()
                continue
            await publisher.flush()
        return False

    def _adapt(self, publisher: RtmpPublisher, pipeline: Pipeline, now: float) -> None:
        """Feed the bitrate controller what the server took; apply a new target."""
        controller = self.bitrate
        if controller is None:
            return
        # The server's acks; from a server that never acks, its TCP's.
        target = controller.update(now, publisher.bytes_delivered, pipeline.queue.depth_ms)
        if target is not None:
            log.info(
                "bitrate",
                target_kbps=target,
                measured_kbps=round(controller.measured_kbps or 0),
                queue_ms=pipeline.queue.depth_ms,
            )
            pipeline.video.set_bitrate(target)

    def _begin_session(self) -> None:
        """Timestamps of a new session: from its first keyframe, at 0 (or the test's start)."""
        self._origin = None
        self._last_ts = {Kind.VIDEO: -1, Kind.AUDIO: -1}
        self._session_start_ms, self._first_session_ms = self._first_session_ms, 0
        self._session_ended = False

    def _write(self, publisher: RtmpPublisher, packet: Packet) -> None:
        """Rebase onto the session origin (its first keyframe) and hand to the socket."""
        if self._session_ended:
            return
        if self._origin is None:
            if packet.kind is not Kind.VIDEO or not packet.keyframe:
                return  # nothing is sent before the first keyframe
            self._origin = packet.dts_ms
        ts = packet.dts_ms - self._origin
        if ts < 0:
            return  # captured before the session's first keyframe
        ts += self._session_start_ms
        if packet.keyframe and ts >= SESSION_LIMIT_MS and self._last_ts[Kind.VIDEO] >= 0:
            self._session_ended = True  # the next session starts at a fresh keyframe
            return
        # Players and muxers want each track's timestamps strictly rising. A
        # camera's clock can repeat a millisecond (or, reset, go back): the
        # frame still goes, a millisecond after the one before, since every
        # later frame of its GOP needs it.
        ts = max(ts, self._last_ts[packet.kind] + 1)
        self._last_ts[packet.kind] = ts
        if packet.kind is Kind.VIDEO:
            body = flv.avc_frame(packet.data, packet.keyframe, packet.pts_ms - packet.dts_ms)
            publisher.write_video(ts, body)
            self.video_packets_sent += 1
            self.delivery.written(publisher.bytes_sent)
        else:
            publisher.write_audio(ts, flv.aac_frame(packet.data))

    async def _close_publisher(self, graceful: bool) -> None:
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            self.delivery.received(publisher.bytes_delivered)
            if not graceful:
                publisher.abandon()
            await publisher.close()
            if publisher.server_acked is not None:  # its last acks, read while closing
                self.delivery.received(publisher.server_acked)
            self.delivery.session_ended()

    async def _teardown(self, graceful: bool) -> None:
        """Stop capture; when graceful and live, send what the encoders flushed, unpublish."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await pipeline.stop()
            publisher = self.publisher
            if graceful and publisher is not None and self.state.state == LIVE:
                end = time.monotonic() + DRAIN_ON_STOP
                with contextlib.suppress(StreamerError):
                    while time.monotonic() < end and (packet := pipeline.handoff.pop()):
                        self._write(publisher, packet)
                        await publisher.flush()
        await self._close_publisher(graceful)


class Stats:
    """The periodic stats line: what a person watching the log wants to know."""

    def __init__(self, streamer: Streamer, publisher: RtmpPublisher, started: float) -> None:
        self.streamer, self.publisher, self.started = streamer, publisher, started
        self._last_time = started
        self._last_bytes = 0
        self._last_frames = streamer.video_packets_sent

    def maybe_log(self, now: float) -> None:
        if now - self._last_time < STATS_INTERVAL:
            return
        elapsed = now - self._last_time
        sent = self.publisher.bytes_sent
        frames = self.streamer.video_packets_sent
        self.streamer.sent_kbps = round((sent - self._last_bytes) * 8 / elapsed / 1000)
        self.streamer.fps = round((frames - self._last_frames) / elapsed, 1)
        log.info("stats", **self.streamer.numbers(), elapsed=f"{now - self.started:.0f}s")
        self._last_time, self._last_bytes, self._last_frames = now, sent, frames


def _recording_status(pipeline: Pipeline | None) -> str:
    recorder = pipeline.recorder if pipeline else None
    if recorder is None:
        return "off"
    return f"failed: {recorder.failed}" if recorder.failed else "on"
