"""A camera that encodes H.264 itself, shaped like our own encoders for the rest of the program.

picamera2's hardware path hands over Annex B frames with SPS/PPS repeated in
each keyframe; the sequence header is built from the first keyframe's
SPS/PPS (the frame itself is still sent, whole), and a keyframe whose SPS/PPS
differ carries the new setup onwards (``Packet.config``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import replace

import structlog

from streamer.clock import MediaClock
from streamer.encode.flv import annexb_to_avcc, avc_decoder_config
from streamer.exc import DeviceError
from streamer.hardware.base import EncodedVideoSource
from streamer.media import Kind, Packet, VideoConfig

log = structlog.get_logger("streamer")


class CameraEncoder:
    def __init__(
        self,
        source: EncodedVideoSource,
        clock: MediaClock,
        sink: Callable[[list[Packet]], None],
        bitrate_kbps: int,
    ) -> None:
        self.source, self._clock, self._sink = source, clock, sink
        self.name = source.encoder_name
        self.config = VideoConfig(
            width=source.width,
            height=source.height,
            fps=source.fps,
            bitrate_kbps=bitrate_kbps,
            avc_config=b"",
            encoder_name=self.name,
        )
        self.config_ready = threading.Event()
        self.frames_before_keyframe = 0

    def on_frame(self, data: bytes, keyframe: bool, captured: float) -> None:
        """Called from the camera's encoder thread: convert and hand off, never block.

        Every keyframe's SPS/PPS are read: a change (the camera's encoder
        restarted with other settings) travels with that keyframe.
        """
        record = None
        if keyframe:
            with contextlib.suppress(ValueError):
                record = avc_decoder_config(data)
        if not self.config_ready.is_set() and record is None:
            self.frames_before_keyframe += 1
            return  # nothing is decodable before the first SPS/PPS + keyframe
        if record is not None and record != self.config.avc_config:
            if self.config_ready.is_set():
                log.info("camera encoder changed its SPS/PPS", encoder=self.name)
            self.config = replace(self.config, avc_config=record)
            self.config_ready.set()
        ms = self._clock.to_ms(captured)
        config = self.config if keyframe else None
        self._sink([Packet(Kind.VIDEO, ms, ms, keyframe, annexb_to_avcc(data), config)])

    def wait_config(self, timeout: float) -> VideoConfig:
        if not self.config_ready.wait(timeout):
            raise DeviceError(
                f"{self.name} gave no keyframe with SPS/PPS within {timeout:g} s; "
                "try --encoder libx264"
            )
        return self.config

    def set_bitrate(self, kbps: int) -> None:
        self.source.set_bitrate(kbps)

    def request_keyframe(self) -> None:
        self.source.request_keyframe()
