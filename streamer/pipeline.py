"""The capture side: hardware, encoders and the threads between them and the send queues.

Capture and encoding run in one thread per track and never wait on the
network: they push into every destination's send queue under its lock (the
fanout) and wake the event loop only when it is waiting. The pipeline stays
up across reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog

from streamer.clock import MediaClock
from streamer.encode.aac import AacEncoder
from streamer.encode.camera import CameraEncoder
from streamer.encode.h264 import H264Encoder
from streamer.encode.select import open_h264
from streamer.exc import DeviceError, StreamerError
from streamer.hardware.base import (
    AudioSource,
    EncodedVideoSource,
    VideoSource,
    camera_number,
    make_camera,
    make_microphone,
    split_spec,
)
from streamer.media import Kind, Packet, VideoConfig
from streamer.net.sendqueue import MAX_FRAME_BYTES, Reason, SendQueue
from streamer.preview import Preview
from streamer.settings import Settings, is_encoded_camera

if TYPE_CHECKING:  # imported where used: only a device with filters or a recording needs them
    from streamer.encode.filters import FilterChain
    from streamer.record import Recorder

log = structlog.get_logger("streamer")


# Audio alone wakes the event loop at most this often: it normally leaves with the next video
# frame (within a frame interval), so a 48 kHz stream costs one wake-up (and one socket
# write) per video frame instead of one more per 21 ms period.
AUDIO_WAKE_S = 0.1


class Outbox:
    """One destination's send queue, shared between capture threads and the event loop."""

    def __init__(
        self,
        queue: SendQueue,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._loop = loop
        self._clock = clock
        self.ready = asyncio.Event()
        self._consumer_waiting = False
        self._waiting_since: float | None = None  # audio left for the consumer, since when

    def push(self, packets: list[Packet]) -> None:
        """Called from capture threads: never blocks on the network.

        The event loop is woken only when its consumer found the queue empty
        and is waiting: one wake-up per batch, not one per packet; and for
        audio alone only once ``AUDIO_WAKE_S`` has passed since the first of
        it was left waiting (a video frame takes it along sooner).
        """
        video = any(p.kind is Kind.VIDEO for p in packets)
        with self._lock:
            for packet in packets:
                self.queue.push(packet)
            wake = self._consumer_waiting
            if wake and not video:
                now = self._clock()
                if self._waiting_since is None:
                    self._waiting_since = now
                wake = now - self._waiting_since >= AUDIO_WAKE_S
            if wake:
                self._consumer_waiting = False
                self._waiting_since = None
        if wake:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                self._loop.call_soon_threadsafe(self.ready.set)

    def pop(self) -> Packet | None:
        """The next packet to send; None means: wait for ``ready``."""
        with self._lock:
            packet = self.queue.pop()
            if packet is None:
                self._consumer_waiting = True
                self.ready.clear()
            else:
                self._waiting_since = None  # what waited is being taken
            return packet

    def take_keyframe_request(self) -> bool:
        with self._lock:
            wanted, self.queue.keyframe_wanted = self.queue.keyframe_wanted, False
            return wanted

    @property
    def depth_ms(self) -> int:
        with self._lock:
            return self.queue.depth_ms

    def go_online(self, reason: Reason) -> None:
        """A new session: flush the backlog, start at a fresh keyframe."""
        with self._lock:
            self.queue.restart(reason)
            self.queue.offline = False

    def go_offline(self, reason: Reason) -> None:
        """No connection: capture goes on, packets are dropped instead of piling up."""
        with self._lock:
            self.queue.offline = True
            self.queue.clear(reason)


class Fanout:
    """The one way from the encoders to the network: every destination's outbox and the recorder.

    A destination that is slow or down only fills (and drops from) its own
    outbox; capture never waits for any of them.
    """

    def __init__(self) -> None:
        self.outboxes: tuple[Outbox, ...] = ()
        self.tap: Callable[[list[Packet]], None] | None = None  # the local recorder
        self._warned_too_large = False  # said once a run: the count is in dropped_video

    def push(self, packets: list[Packet]) -> None:
        if not packets:
            return
        tap = self.tap
        if tap is not None:  # recording goes on whatever the network does
            tap(packets)
        for packet in packets:
            if len(packet.data) > MAX_FRAME_BYTES and not self._warned_too_large:
                self._warned_too_large = True
                log.warning(
                    "a video frame is too large for RTMP servers: dropped until the next "
                    "keyframe; lower the video bitrate",
                    bytes=len(packet.data),
                    limit=MAX_FRAME_BYTES,
                )
        for outbox in self.outboxes:
            outbox.push(packets)


class CaptureThread(threading.Thread):
    """Reads a source, encodes, hands packets off; reports its failure instead of dying.

    It runs in the context of the code that made it, so its log lines carry
    its device's state and are redacted with that device's keys.
    """

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
        self._context = contextvars.copy_context()

    def run(self) -> None:
        self._context.run(self._capture)

    def _capture(self) -> None:
        try:
            while not self.stopping.is_set():
                self._sink(self._step())
            self._sink(self._flush())
        except BaseException as exc:  # reported to the event loop
            self.error = exc
            log.error("capture failed", thread=self.name, error=str(exc))


class Pipeline:
    """Hardware, encoders and capture threads: up from preparing until idle or error.

    What the encoders make goes to ``fanout``: the destinations' outboxes and
    the recorder. ``Settings.camera`` and ``microphone`` are names built from
    ``streamer.backends``, or the app's own source objects, used as they are
    (opened in ``start``, closed in ``stop``; an app's ``EncodedVideoSource``
    takes the hardware-encoded path, as picamera2's does). ``preview`` sees every filtered
    frame and video packet (the status page's picture).

    ``Settings.rotate``: 180 on a picamera2 camera is the camera's own transform (either
    path, no filter graph); every other rotation is the first filter of ``filters`` (on
    picamera2 it takes the raw-frame path), and the encoder is opened at the turned size.
    """

    def __init__(self, s: Settings, fanout: Fanout) -> None:
        self.clock = MediaClock()
        self.fanout = fanout
        self.preview = Preview()
        self.camera: VideoSource | None = None
        self.encoded: EncodedVideoSource | None = None
        self.video: H264Encoder | CameraEncoder
        name, arg = split_spec(s.camera) if isinstance(s.camera, str) else ("", None)
        self.filters: FilterChain | None = None
        # A picamera2 camera turns its picture by 180 itself (libcamera's transform: the
        # sensor reads out flipped, no CPU); any other rotation is a filter, first in the graph.
        camera_turns = name == "picamera2" and s.rotate == 180
        graph_rotate = 0 if camera_turns else s.rotate
        if s.filters or graph_rotate:
            # Filters need raw frames: on picamera2 they force the raw-frame path.
            from streamer.encode.filters import FilterChain, parse_filter  # only when asked

            specs = [parse_filter(spec) for spec in s.filters]
            self.filters = FilterChain(specs, s.width, s.height, s.fps, rotate=graph_rotate)
        hardware_path = s.encoder != "libx264" and self.filters is None
        if is_encoded_camera(s.camera):
            # The app's own camera that encodes itself (Settings refused filters with it).
            self.encoded = s.camera
            self.video = CameraEncoder(s.camera, self.clock, self._video_out, s.video_bitrate_kbps)
        elif name == "picamera2" and hardware_path and _pi_hw_encoder():
            # The Pi's hardware encoder behind picamera2: frames arrive encoded.
            from streamer.hardware.picam import PicameraEncoded

            source = PicameraEncoded(
                s.width,
                s.height,
                s.fps,
                s.video_bitrate_kbps,
                camera_number(arg),
                rotate=180 if camera_turns else 0,
            )
            self.encoded = source
            self.video = CameraEncoder(source, self.clock, self._video_out, s.video_bitrate_kbps)
        else:
            if camera_turns:
                from streamer.hardware.picam import PicameraRaw

                self.camera = PicameraRaw(s.width, s.height, s.fps, camera_number(arg), rotate=180)
            elif isinstance(s.camera, str):
                self.camera = make_camera(s.camera, s.width, s.height, s.fps)
            else:
                # Settings checked open(), read(), close()
                self.camera = cast(VideoSource, s.camera)
            encoder = s.encoder if name != "picamera2" else "libx264"
            width, height = s.streamed_size  # a quarter turn in the filters swaps them
            self.video = open_h264(encoder, width, height, s.fps, s.video_bitrate_kbps)
        mic = make_microphone(s.microphone) if isinstance(s.microphone, str) else s.microphone
        self.microphone: AudioSource | None = mic
        self.audio = (
            AacEncoder(mic.sample_rate, mic.channels, s.audio_bitrate_kbps)
            if mic is not None
            else None
        )
        self._camera_name = s.camera if isinstance(s.camera, str) else type(s.camera).__name__
        self.threads: list[CaptureThread] = []
        self.recorder: Recorder | None = None

    def start_recording(self, video: VideoConfig, s: Settings) -> None:
        """Record the same packets locally; a recording problem never stops the stream."""
        assert s.record_dir is not None
        keep = round(s.record_keep_gb * 1e9) if s.record_keep_gb else None
        from streamer.record import Recorder  # only when asked

        recorder = Recorder(
            Path(s.record_dir),
            video,
            self.audio.config if self.audio else None,
            segment_seconds=s.record_minutes * 60,
            keep_bytes=keep,
        )
        try:
            recorder.start()
        except StreamerError as exc:
            log.error("recording disabled", reason=exc.message)
            return
        self.recorder = recorder
        self.fanout.tap = recorder.submit

    def start(self) -> None:
        try:
            if self.camera is not None:
                self.camera.open()
        except StreamerError:
            raise
        except Exception as exc:  # any backend failure names the camera
            raise DeviceError(f"camera {self._camera_name!r} could not be opened: {exc}") from exc
        if self.microphone is not None:
            self.microphone.open()
        camera, clock, video, fanout = self.camera, self.clock, self.video, self.fanout
        preview = self.preview
        self.threads = []
        if self.encoded is not None and isinstance(video, CameraEncoder):
            self.encoded.start(video.on_frame)
        elif camera is not None and isinstance(video, H264Encoder):
            encoder = video

            chain = self.filters

            def video_step() -> list[Packet]:
                frame, captured = camera.read()
                if chain is not None:
                    frame = chain.process(frame, captured)
                    chain.adapt()  # too slow for the frame rate: lighten the chain, once
                preview.offer_frame(frame)
                return encoder.encode(frame, clock.to_ms(captured))

            self.threads.append(
                CaptureThread("video", video_step, lambda: encoder.encode(None), self._video_out)
            )
        mic, audio = self.microphone, self.audio
        if mic is not None and audio is not None:

            def audio_step() -> list[Packet]:
                samples, captured = mic.read()
                return audio.encode(samples, clock.to_ms(captured))

            self.threads.append(
                CaptureThread("audio", audio_step, lambda: audio.encode(None), fanout.push)
            )
        for t in self.threads:
            t.start()

    def _video_out(self, packets: list[Packet]) -> None:
        """Video packets, on either path: the preview keeps the latest keyframe, then out."""
        self.preview.offer_packets(packets)
        self.fanout.push(packets)

    def check(self) -> None:
        """Raise the failure of a capture thread, if one died."""
        for t in self.threads:
            if t.error is not None:
                if isinstance(t.error, StreamerError):
                    raise t.error
                raise DeviceError(f"{t.name} capture failed: {t.error}")
            if not t.is_alive() and not t.stopping.is_set():
                raise DeviceError(f"{t.name} capture stopped unexpectedly")

    async def stop(self) -> None:
        """Stop capture (encoders flush into the queue), then close the hardware."""
        for t in self.threads:
            t.stopping.set()
        await asyncio.to_thread(self._join)
        if self.encoded is not None:
            await asyncio.to_thread(self.encoded.stop)
        if self.camera is not None:
            self.camera.close()
        if self.recorder is not None:
            self.fanout.tap = None
            await asyncio.to_thread(self.recorder.stop)
        if self.microphone is not None:
            self.microphone.close()

    def _join(self) -> None:
        for t in self.threads:
            t.join(timeout=5.0)


def _pi_hw_encoder() -> bool:
    from streamer.hardware.picam import hardware_h264_available

    return hardware_h264_available()
