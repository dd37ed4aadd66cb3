"""Streamer: sources → encoders → send queue → RTMP publisher.

Capture and encoding run in one thread per track and never wait on the
network: they push into the send queue under a lock and wake the event loop.
The event loop owns the publisher and takes packets in timestamp order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from streamer import log as logsetup
from streamer.clock import MediaClock
from streamer.encode import flv
from streamer.encode.aac import AacEncoder
from streamer.encode.h264 import H264Encoder
from streamer.exc import DeviceError, StreamerError
from streamer.hardware.base import AudioSource, VideoSource, make_camera, make_microphone
from streamer.media import Kind, Packet
from streamer.net.sendqueue import SendQueue
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.url import RtmpUrl

log = structlog.get_logger("streamer")

STATS_INTERVAL = 5.0
DRAIN_ON_STOP = 2.0  # seconds allowed to send what is queued when stopping


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


class PacketHandoff:
    """The send queue shared between capture threads and the event loop."""

    def __init__(self, queue: SendQueue, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._loop = loop
        self.ready = asyncio.Event()

    def push(self, packets: list[Packet]) -> None:
        """Called from capture threads: never blocks on the network."""
        if not packets:
            return
        with self._lock:
            for packet in packets:
                self.queue.push(packet)
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(self.ready.set)

    def pop(self) -> Packet | None:
        with self._lock:
            packet = self.queue.pop()
            if packet is None:
                self.ready.clear()
            return packet

    def take_keyframe_request(self) -> bool:
        with self._lock:
            wanted, self.queue.keyframe_wanted = self.queue.keyframe_wanted, False
            return wanted


class CaptureThread(threading.Thread):
    """Reads a source, encodes, hands packets off; reports its failure instead of dying."""

    def __init__(
        self,
        name: str,
        step: Callable[[], list[Packet]],
        flush: Callable[[], list[Packet]],
        sink: Callable[[list[Packet]], None],
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._step, self._flush, self._sink = step, flush, sink
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                packets = self._step()
                self.count += 1
                self._sink(packets)
            self._sink(self._flush())
        except BaseException as exc:
            self.error = exc
            log.error("capture failed", thread=self.name, error=str(exc))


class Streamer:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.clock = MediaClock()
        self.queue = SendQueue()
        self.camera: VideoSource = make_camera(
            settings.camera, settings.width, settings.height, settings.fps
        )
        self.microphone: AudioSource | None = make_microphone(settings.microphone)
        self.video_packets_sent = 0
        self.frames_captured = 0
        self._origin: int | None = None
        self._last_ts = {Kind.VIDEO: -1, Kind.AUDIO: -1}

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set or the duration ends; raise StreamerError on failure."""
        s = self.s
        logsetup.add_secret(s.url.key)
        video = H264Encoder(s.width, s.height, s.fps, s.video_bitrate_kbps)
        audio = AacEncoder(bitrate_kbps=s.audio_bitrate_kbps) if self.microphone else None
        try:
            self.camera.open()
        except StreamerError:
            raise
        except Exception as exc:
            raise DeviceError(f"camera {s.camera!r} could not be opened: {exc}") from exc
        if self.microphone:
            self.microphone.open()
        publisher = RtmpPublisher(s.url)
        threads: list[CaptureThread] = []
        try:
            await publisher.connect()
            await publisher.send_metadata(
                flv.metadata(video.config, audio.config if audio else None, "streamer")
            )
            await publisher.send_video(0, flv.avc_sequence_header(video.config))
            if audio:
                await publisher.send_audio(0, flv.aac_sequence_header(audio.config))
            handoff = PacketHandoff(self.queue, asyncio.get_running_loop())
            threads = self._start_capture(video, audio, handoff)
            await self._pump(publisher, handoff, threads, stop)
            for t in threads:
                t.stopping.set()
            await asyncio.to_thread(self._join, threads)
            await self._drain(publisher, handoff)
            self._raise_capture_error(threads)
        finally:
            for t in threads:
                t.stopping.set()
            await asyncio.to_thread(self._join, threads)
            await publisher.close()
            self.camera.close()
            if self.microphone:
                self.microphone.close()

    def _start_capture(
        self, video: H264Encoder, audio: AacEncoder | None, handoff: PacketHandoff
    ) -> list[CaptureThread]:
        camera, clock = self.camera, self.clock

        def video_step() -> list[Packet]:
            if handoff.take_keyframe_request():
                video.keyframe_requested = True
            frame, captured = camera.read()
            return video.encode(frame, clock.to_ms(captured))

        threads = [CaptureThread("video", video_step, lambda: video.encode(None), handoff.push)]
        mic = self.microphone
        if audio and mic:

            def audio_step() -> list[Packet]:
                samples, captured = mic.read()
                return audio.encode(samples, clock.to_ms(captured))

            threads.append(
                CaptureThread("audio", audio_step, lambda: audio.encode(None), handoff.push)
            )
        for t in threads:
            t.start()
        return threads

    @staticmethod
    def _join(threads: list[CaptureThread]) -> None:
        for t in threads:
            t.join(timeout=5.0)

    @staticmethod
    def _raise_capture_error(threads: list[CaptureThread]) -> None:
        for t in threads:
            if t.error is not None:
                if isinstance(t.error, StreamerError):
                    raise t.error
                raise DeviceError(f"{t.name} capture failed: {t.error}")

    async def _pump(
        self,
        publisher: RtmpPublisher,
        handoff: PacketHandoff,
        threads: list[CaptureThread],
        stop: asyncio.Event,
    ) -> None:
        started = time.monotonic()
        deadline = started + self.s.duration if self.s.duration else None
        stats = Stats(self, publisher, started)
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if any(t.error is not None or not t.is_alive() for t in threads):
                self._raise_capture_error(threads)
                raise DeviceError("a capture thread stopped unexpectedly")
            stats.maybe_log(now)
            packet = handoff.pop()
            if packet is None:
                wait = STATS_INTERVAL if deadline is None else min(STATS_INTERVAL, deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handoff.ready.wait(), max(0.0, wait))
                continue
            await self._send(publisher, packet)

    async def _drain(self, publisher: RtmpPublisher, handoff: PacketHandoff) -> None:
        """Send what the encoders flushed, within a bounded time."""
        end = time.monotonic() + DRAIN_ON_STOP
        while time.monotonic() < end and (packet := handoff.pop()) is not None:
            await self._send(publisher, packet)

    async def _send(self, publisher: RtmpPublisher, packet: Packet) -> None:
        """Rebase onto the session origin (the first keyframe) and send."""
        if self._origin is None:
            if packet.kind is not Kind.VIDEO or not packet.keyframe:
                return  # nothing is sent before the first keyframe
            self._origin = packet.dts_ms
        ts = packet.dts_ms - self._origin
        if ts < 0 or ts < self._last_ts[packet.kind]:
            return
        self._last_ts[packet.kind] = ts
        if packet.kind is Kind.VIDEO:
            body = flv.avc_frame(packet.data, packet.keyframe, packet.pts_ms - packet.dts_ms)
            await publisher.send_video(ts, body)
            self.video_packets_sent += 1
        else:
            await publisher.send_audio(ts, flv.aac_frame(packet.data))


class Stats:
    """The periodic stats line: what a person watching the log wants to know."""

    def __init__(self, streamer: Streamer, publisher: RtmpPublisher, started: float) -> None:
        self.streamer, self.publisher, self.started = streamer, publisher, started
        self._last_time = started
        self._last_bytes = 0
        self._last_frames = 0

    def maybe_log(self, now: float) -> None:
        if now - self._last_time < STATS_INTERVAL:
            return
        elapsed = now - self._last_time
        sent = self.publisher.bytes_sent
        frames = self.streamer.video_packets_sent
        log.info(
            "stats",
            sent_kbps=round((sent - self._last_bytes) * 8 / elapsed / 1000),
            fps=round((frames - self._last_frames) / elapsed, 1),
            queue_ms=self.streamer.queue.depth_ms,
            dropped=self.streamer.queue.counters.dropped_total,
            elapsed=f"{now - self.started:.0f}s",
        )
        self._last_time, self._last_bytes, self._last_frames = now, sent, frames
