"""One publish on one connection: codec setup first, then packets on the session's own clock.

A session starts with onMetaData and the AVC/AAC sequence headers at time 0;
its origin is the capture time of its first video keyframe (nothing before
it is sent), and each track's timestamps rise strictly from there. RTMP time
is 32-bit milliseconds and many readers take FLV time as signed: a session
that gets within ``SESSION_LIMIT_MS`` of 2^31 ms ends at its next keyframe,
and the next session starts at 0 (see Time in docs/design.md). A keyframe
whose decoder setup (``Packet.config``) differs from the one last sent is
preceded by a new AVC sequence header at its own timestamp: an encoder that
changed its SPS/PPS keeps every viewer decoding.
"""

from __future__ import annotations

from typing import Any, Protocol

from streamer.encode import flv
from streamer.media import AudioConfig, Kind, Packet, VideoConfig

SESSION_LIMIT_MS = 2**31 - 60_000
MIN_SESSION_MS = 1000  # a session always runs this long: one that ends at once would flap


class Wire(Protocol):
    """What a session needs of a connected publisher (``RtmpPublisher``)."""

    async def send_metadata(self, metadata: dict[str, Any]) -> None: ...
    async def send_video(self, timestamp_ms: int, body: bytes) -> None: ...
    async def send_audio(self, timestamp_ms: int, body: bytes) -> None: ...
    def write_video(self, timestamp_ms: int, body: bytes) -> None: ...
    def write_audio(self, timestamp_ms: int, body: bytes) -> None: ...


class Session:
    """Rebases packets onto one publish's clock and writes them as FLV tag bodies.

    ``start_ms`` is the first timestamp (0; tests of the timestamp boundaries
    start near them instead of waiting days).
    """

    def __init__(self, wire: Wire, start_ms: int = 0) -> None:
        self.wire = wire
        self.start_ms = start_ms
        self.ended = False  # reached SESSION_LIMIT_MS: publish anew
        self.video_frames = 0
        self._origin: int | None = None
        self._last = {Kind.VIDEO: -1, Kind.AUDIO: -1}
        self._avc_config = b""  # the SPS/PPS in the last sequence header sent

    async def open(self, video: VideoConfig, audio: AudioConfig | None) -> None:
        """Describe the stream: metadata and the decoders' setup, before any frame."""
        await self.wire.send_metadata(flv.metadata(video, audio, "streamer"))
        await self.wire.send_video(0, flv.avc_sequence_header(video))
        self._avc_config = video.avc_config
        if audio is not None:
            await self.wire.send_audio(0, flv.aac_sequence_header(audio))

    @property
    def last_video_ms(self) -> int:
        return self._last[Kind.VIDEO]

    def write(self, packet: Packet) -> bool:
        """Write one packet; False when it was not sent (before the origin, or the end)."""
        if self.ended:
            return False
        if self._origin is None:
            if packet.kind is not Kind.VIDEO or not packet.keyframe:
                return False  # nothing is sent before the first keyframe
            self._origin = packet.dts_ms
        ts = packet.dts_ms - self._origin
        if ts < 0:
            return False  # captured before the session's first keyframe
        ts += self.start_ms
        if packet.keyframe and ts >= SESSION_LIMIT_MS and ts - self.start_ms >= MIN_SESSION_MS:
            self.ended = True  # the next session starts at a fresh keyframe
            return False
        # Players and muxers want each track's timestamps strictly rising. A
        # camera's clock can repeat a millisecond (or, reset, go back): the
        # frame still goes, a millisecond after the one before, since every
        # later frame of its GOP needs it.
        ts = max(ts, self._last[packet.kind] + 1)
        self._last[packet.kind] = ts
        if packet.kind is Kind.VIDEO:
            config = packet.config
            if config is not None and config.avc_config != self._avc_config:
                self.wire.write_video(ts, flv.avc_sequence_header(config))
                self._avc_config = config.avc_config
            body = flv.avc_frame(packet.data, packet.keyframe, packet.pts_ms - packet.dts_ms)
            self.wire.write_video(ts, body)
            self.video_frames += 1
        else:
            self.wire.write_audio(ts, flv.aac_frame(packet.data))
        return True
